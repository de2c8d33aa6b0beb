#!/usr/bin/env bash
# `rigserve inspect` on the golden models (written by an independent GGUF writer, not ours):
# the --json document must list the keys and tensors of tensors.txt with the same types and
# shapes, and the same value types, values and tensor offsets that a small independent Python
# parser of the file (below) finds. Also: the human listing, and a clear error on a non-GGUF file.
# Usage: bash inspect_test.sh PATH/TO/rigserve SHARED_DIR     (exit 77 = skipped)
set -euo pipefail

rigserve=${1:?usage: inspect_test.sh RIGSERVE SHARED_DIR}
shared=${2:-}
golden="$shared/golden"
if [ -z "$shared" ] || [ ! -d "$golden" ]; then
  echo "SKIP: no golden models (shared dir '$shared' has no golden/)"
  exit 77
fi
if ! command -v python3 >/dev/null; then
  echo "SKIP: python3 not found"
  exit 77
fi
if [ ! -x "$rigserve" ]; then
  echo "FAIL: rigserve binary '$rigserve' not found"
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

checked=0
for dir in "$golden"/*/; do
  model="$dir/model.gguf"
  listing="$dir/tensors.txt"
  [ -f "$model" ] && [ -f "$listing" ] || continue
  name=$(basename "$dir")
  "$rigserve" inspect --json "$model" > "$tmp/$name.json"
  python3 - "$tmp/$name.json" "$listing" "$model" <<'PY'
import json, struct, sys

doc_path, listing_path, model_path = sys.argv[1:4]
doc = json.load(open(doc_path))
assert set(doc) == {"version", "metadata", "tensors"}, f"top-level keys {sorted(doc)}"

# tensors.txt: "keys N", "key NAME", "tensor NAME TYPE ne0,ne1,..."
keys, tensors, n_keys = [], [], None
for line in open(listing_path):
    parts = line.split()
    if not parts:
        continue
    if parts[0] == "keys":
        n_keys = int(parts[1])
    elif parts[0] == "key":
        keys.append(parts[1])
    elif parts[0] == "tensor":
        tensors.append((parts[1], parts[2], [int(x) for x in parts[3].split(",")]))
assert n_keys is None or n_keys == len(keys), f"tensors.txt: keys {n_keys} but {len(keys)} listed"

meta = doc["metadata"]
extra = set(meta) - set(keys) - {"general.alignment"}
missing = set(keys) - set(meta)
assert not missing, f"keys missing from inspect: {sorted(missing)}"
assert not extra, f"keys inspect lists but tensors.txt does not: {sorted(extra)}"
got = [(t["name"], t["type"], t["shape"]) for t in doc["tensors"]]
assert got == tensors, "tensor list differs:\n" + "\n".join(
    f"  inspect {a}  listing {b}" for a, b in zip(got, tensors) if a != b) + \
    f"\n  ({len(got)} vs {len(tensors)} tensors)"

# An independent minimal GGUF parse of the same file: value types, values, offsets.
data = open(model_path, "rb").read()
pos = 0
def take(fmt):
    global pos
    v = struct.unpack_from("<" + fmt, data, pos)
    pos += struct.calcsize("<" + fmt)
    return v[0]
def gstr():
    global pos
    n = take("Q"); s = data[pos:pos + n]; pos += n
    return s.decode("utf-8", "replace")
names = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"]
fmts = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
def value(t):
    if t == 8: return gstr()
    if t == 9:
        et = take("I"); n = take("Q")
        return [value(et) for _ in range(n)]
    return take(fmts[t])
assert take("I") == 0x46554747
version = take("I"); nt = take("Q"); nkv = take("Q")
assert doc["version"] == version, f"version {doc['version']} != {version}"
alignment = 32
for _ in range(nkv):
    k = gstr(); t = take("I"); v = value(t)
    m = meta[k]
    assert m["type"] == names[t], f"{k}: type {m['type']} != {names[t]}"
    if k == "general.alignment": alignment = v
    if t == 9:
        assert m["length"] == len(v) and m["value"] == v, f"{k}: array value differs"
    elif t in (6, 12):
        assert abs(float(m["value"]) - v) <= 1e-6 * max(1.0, abs(v)), f"{k}: {m['value']} != {v}"
    else:
        assert m["value"] == v, f"{k}: {m['value']!r} != {v!r}"
infos = []
for _ in range(nt):
    n = gstr(); nd = take("I"); ne = [take("Q") for _ in range(nd)]; ty = take("I"); off = take("Q")
    infos.append((n, ne, off))
data_start = (pos + alignment - 1) // alignment * alignment
ends = []
for t, (n, ne, off) in zip(doc["tensors"], infos):
    assert t["name"] == n and t["shape"] == ne, f"{n}: name/shape differ"
    assert t["offset"] == off, f"{n}: offset {t['offset']} != {off}"
    assert off % alignment == 0, f"{n}: offset {off} not aligned to {alignment}"
    ends.append((off, off + t["size"], n))
    assert data_start + off + t["size"] <= len(data), f"{n}: runs past the file"
ends.sort()
for (a0, a1, an), (b0, b1, bn) in zip(ends, ends[1:]):
    assert b0 >= a1, f"{an} and {bn} overlap"
print(f"ok: {len(meta)} keys, {len(got)} tensors, version {version}, alignment {alignment}")
PY
  echo "  $name: json ok"

  "$rigserve" inspect "$model" > "$tmp/$name.txt"
  grep -q "^GGUF: *version 3, alignment" "$tmp/$name.txt" || { echo "FAIL: $name: no header line"; exit 1; }
  grep -q "^totals by type:" "$tmp/$name.txt" || { echo "FAIL: $name: no totals"; exit 1; }
  first_tensor=$(awk '$1 == "tensor" { print $2; exit }' "$listing")
  grep -q "^  $first_tensor " "$tmp/$name.txt" || { echo "FAIL: $name: $first_tensor not listed"; exit 1; }
  grep -q "^  general.architecture  *string  *\"qwen35" "$tmp/$name.txt" ||
    { echo "FAIL: $name: general.architecture not listed"; exit 1; }
  checked=$((checked + 1))
done

if [ "$checked" -eq 0 ]; then
  echo "SKIP: no golden model with tensors.txt under $golden"
  exit 77
fi

# A file that is not GGUF: non-zero exit and the reader's message.
printf 'not a gguf file at all' > "$tmp/bad.gguf"
if "$rigserve" inspect "$tmp/bad.gguf" > /dev/null 2> "$tmp/err"; then
  echo "FAIL: inspect accepted a non-GGUF file"
  exit 1
fi
grep -q "bad magic .* at offset 0" "$tmp/err" || { echo "FAIL: unexpected error: $(cat "$tmp/err")"; exit 1; }
# A truncated golden model: the error names truncation.
head -c 1000 "$golden/$(basename "$(dirname "$model")")/model.gguf" > "$tmp/cut.gguf"
if "$rigserve" inspect --json "$tmp/cut.gguf" > /dev/null 2> "$tmp/err"; then
  echo "FAIL: inspect accepted a truncated file"
  exit 1
fi
grep -q "offset" "$tmp/err" || { echo "FAIL: truncation error names no offset: $(cat "$tmp/err")"; exit 1; }

echo "inspect_test: $checked golden models checked"
