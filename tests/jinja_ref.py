#!/usr/bin/env python3
"""Reference chat-template renderer: python3-jinja2 set up the way Hugging Face's
apply_chat_template sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, a tojson that neither HTML-escapes nor escapes non-ASCII, raise_exception).

Same command line as `rigserve render-chat`:
  jinja_ref.py --template FILE --messages FILE.json [--tools FILE.json] [--kwargs JSON]
               [--no-generation-prompt]
Prints exactly the rendered prompt (no newline added). Exit 1 with a message on error.

Messages are normalised like rigserve (and vLLM) do: an assistant tool call whose
function.arguments is a JSON string gets it parsed; missing/null/"" arguments become {}.
"""
import argparse
import json
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def normalize(messages):
    for m in messages:
        if m.get("role") != "assistant" or not isinstance(m.get("tool_calls"), list):
            continue
        for call in m["tool_calls"]:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            args = fn.get("arguments")
            if args is None or args == "":
                fn["arguments"] = {}
            elif isinstance(args, str):
                fn["arguments"] = json.loads(args)
    return messages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", required=True)
    ap.add_argument("--messages", required=True)
    ap.add_argument("--tools")
    ap.add_argument("--kwargs")
    ap.add_argument("--no-generation-prompt", action="store_true")
    a = ap.parse_args()
    with open(a.template, encoding="utf-8", newline="") as f:
        source = f.read()
    with open(a.messages, encoding="utf-8") as f:
        messages = normalize(json.load(f))
    tools = None
    if a.tools:
        with open(a.tools, encoding="utf-8") as f:
            tools = json.load(f)
    kwargs = json.loads(a.kwargs) if a.kwargs else {}
    try:
        out = make_env().from_string(source).render(
            messages=messages, tools=tools, documents=None,
            add_generation_prompt=not a.no_generation_prompt, **kwargs)
    except Exception as e:  # noqa: BLE001 - any template failure is a failed render
        sys.stderr.write("jinja_ref: %s: %s\n" % (type(e).__name__, e))
        return 1
    sys.stdout.buffer.write(out.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
