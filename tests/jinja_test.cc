// Unit tests of the Jinja engine (coordinator/text/jinja*.cc), chat_template.cc and the
// built-in chat template. Byte-for-byte agreement with python3-jinja2 over whole templates is
// tests/chat_template_test.sh; here each construct is pinned to the output jinja2 gives
// (values checked with python3-jinja2 3.1 when the test was written) and every error is checked
// for its line:column.
#include <string>

#include "coordinator/text/chat_template.h"
#include "coordinator/text/jinja.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/default_chat_template.h"

namespace rs::jinja {
namespace {

using ::testing::HasSubstr;

// Renders `tpl` with the JSON object `ctx` as variables; failures come back as "ERROR: msg".
std::string R(const std::string& tpl, const std::string& ctx = "{}") {
  auto t = Template::Parse(tpl);
  if (!t.ok()) return "ERROR: " + std::string(t.status().message());
  auto c = ParseJson(ctx);
  if (!c.ok()) return "BAD CONTEXT: " + std::string(c.status().message());
  auto out = t->Render(*c);
  if (!out.ok()) return "ERROR: " + std::string(out.status().message());
  return *out;
}

TEST(JinjaLexer, TextVariablesComments) {
  EXPECT_EQ(R("plain text"), "plain text");
  EXPECT_EQ(R("a{{ x }}b", R"({"x": 5})"), "a5b");
  EXPECT_EQ(R("a{# note #}b"), "ab");
  EXPECT_EQ(R("{{ '{{' }}"), "{{");
  EXPECT_EQ(R("{{ {'a': {'b': 1}} }}"), "{'a': {'b': 1}}");  // braces balance inside {{ }}
  EXPECT_EQ(R("one trailing newline is dropped\n"), "one trailing newline is dropped");
  EXPECT_EQ(R("two\n\n"), "two\n");
  EXPECT_EQ(R("crlf\r\nline\rmac\r\n"), "crlf\nline\nmac");
}

TEST(JinjaLexer, TrimAndLstripBlocks) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it.
  EXPECT_EQ(R("    {% if true %}\n    body\n    {% endif %}\nafter"), "    body\nafter");
  EXPECT_EQ(R("  {# c #}\nx"), "x");
  // Variable tags are not lstripped and do not trim.
  EXPECT_EQ(R("  {{ 1 }}\nx"), "  1\nx");
  // Only whitespace between the line start and the tag is stripped.
  EXPECT_EQ(R("a {% if true %}b{% endif %}"), "a b");
  // '+' disables lstrip (left) and trim (right).
  EXPECT_EQ(R("  {%+ if true %}x{% endif +%}\ny"), "  x\ny");
  // '-' strips all whitespace, newlines included.
  EXPECT_EQ(R("a  \n  {%- if true -%}  \n  b  {%- endif %}"), "ab");
  EXPECT_EQ(R("a\n{{- 'b' -}}\n c"), "abc");
  EXPECT_EQ(R("{% for i in [1, 2] %}\n  - {{ i }}\n{% endfor %}"), "  - 1\n  - 2\n");
}

TEST(JinjaExpr, LiteralsAndPythonStr) {
  EXPECT_EQ(R("{{ true }} {{ False }} {{ none }} {{ None }}"), "True False None None");
  EXPECT_EQ(R("{{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 1e-5 }}"),
            "1.0 1e+20 0.30000000000000004 1e+16 1000000000000000.0 0.0001 1e-05");
  EXPECT_EQ(R("{{ [1, 'a', none, true, 1.5, {'k': (1, 2)}] }}"),
            "[1, 'a', None, True, 1.5, {'k': (1, 2)}]");
  EXPECT_EQ(R("{{ ['it\\'s', 'a\"b', 'x\\ny'] }}"), R"(["it's", 'a"b', 'x\ny'])");
  EXPECT_EQ(R("{{ (1,) }}{{ () }}"), "(1,)()");
  EXPECT_EQ(R("{{ 'a' 'b' }} {{ '\\x41\\u00e9' }} {{ 'keep\\q' }}"), "ab Aé keep\\q");
  EXPECT_EQ(R("{{ 0x1f }} {{ 1_000 }} {{ 0b11 }} {{ 0o7 }}"), "31 1000 3 7");
}

TEST(JinjaExpr, Operators) {
  EXPECT_EQ(R("{{ 7 // -2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }}"),
            "-4 2 3.5 2.0 1024 0.5");
  EXPECT_EQ(R("{{ -2 ** 2 }} {{ 1 + 2 * 3 }} {{ 1 ~ 2 * 3 }} {{ 'ab' * 2 }}"), "4 7 16 abab");
  EXPECT_EQ(R("{{ 1 < 2 < 3 }} {{ 1 == 1.0 }} {{ 1 == true }} {{ (1, 2) == [1, 2] }}"),
            "True True True False");
  EXPECT_EQ(R("{{ 2 in [1, 2] }} {{ 'b' in 'abc' }} {{ 'k' in {'k': 1} }} {{ 3 not in [3] }}"),
            "True True True False");
  EXPECT_EQ(R("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not 0 }} {{ 'a' if 0 }}|"), "x y True |");
  EXPECT_EQ(R("{{ 'a' ~ none ~ 1 ~ undefined_thing }}"), "aNone1");
}

TEST(JinjaExpr, AttributesSubscriptsSlices) {
  const char* ctx = R"({"d": {"a": [10, 20, 30], "items": "key"}, "s": "héllo"})";
  EXPECT_EQ(R("{{ d.a[1] }} {{ d['a'][-1] }} {{ d.a.0 }} {{ d.a[5] }}|", ctx), "20 30 10 |");
  // jinja2 looks up attributes first for `.`, items first for `[]`.
  EXPECT_EQ(R("{{ d.items is callable }} {{ d['items'] }}", ctx), "True key");
  EXPECT_EQ(R("{{ s[1] }} {{ s[::-1] }} {{ s[1:3] }} {{ s|length }} {{ d.a[::-2] }}", ctx),
            "é olléh él 5 [30, 10]");
}

TEST(JinjaStatements, IfForSetNamespace) {
  EXPECT_EQ(R("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}"), "b");
  EXPECT_EQ(R("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in [1, 2, 3] if x != 2 %}{{ loop.index }}/{{ loop.length }}:{{ x }}"
              "{{ ',' if not loop.last }}{% endfor %}"),
            "1/2:1,2/2:3");
  EXPECT_EQ(R("{% for x in 'ab' %}{{ loop.revindex }}{{ loop.first }}{{ loop.cycle('o', 'e') }}"
              "{% endfor %}"),
            "2Trueo1Falsee");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(R("{% for i in range(9) %}{% if i == 1 %}{% continue %}{% endif %}"
              "{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "023");
  // A set inside a loop does not leak; inside an if it does; namespaces carry state out.
  EXPECT_EQ(R("{% set x = 0 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}{% endfor %}{{ x }}"),
            "[0][0]0");
  EXPECT_EQ(R("{% if true %}{% set y = 'leak' %}{% endif %}{{ y }}"), "leak");
  EXPECT_EQ(R("{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}"
              "{% endfor %}{{ ns.n }}"),
            "6");
  EXPECT_EQ(R("{% set a, b = 1, 2 %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(R("{% set blk %}in {{ 1 + 1 }}{% endset %}[{{ blk }}]"), "[in 2]");
}

TEST(JinjaStatements, Macros) {
  EXPECT_EQ(R("{% macro g(n, h='Hi') %}{{ h }} {{ n }}{% endmacro %}{{ g('a') }}|{{ g('b', h='Yo') }}"),
            "Hi a|Yo b");
  // Macros read top-level variables at call time; missing arguments are undefined.
  EXPECT_EQ(R("{% set t = 1 %}{% macro m(x) %}{{ t }}[{{ x }}]{% endmacro %}{% set t = 2 %}{{ m() }}"),
            "2[]");
  EXPECT_EQ(R("{% macro c(k) %}{{ k }}{% if k %}{{ c(k - 1) }}{% endif %}{% endmacro %}{{ c(3) }}"),
            "3210");
}

TEST(JinjaFilters, Common) {
  const char* ctx = R"({"s": "  Hi There  ", "l": [3, 1, 2], "p": [{"n": "a", "ok": true}, {"n": "b", "ok": false}]})";
  EXPECT_EQ(R("[{{ s|trim }}] {{ s|upper|trim }} {{ s|lower|trim }} {{ l|length }} {{ s|count }}", ctx),
            "[Hi There] HI THERE hi there 3 12");
  EXPECT_EQ(R("{{ l|join(',') }} {{ l|first }} {{ l|last }} {{ l|reverse|list }} {{ l|list }}", ctx),
            "3,1,2 3 2 [2, 1, 3] [3, 1, 2]");
  EXPECT_EQ(R("{{ x|default('d') }} {{ ''|default('e', true) }} {{ x|d }}|", ctx), "d e |");
  EXPECT_EQ(R("{{ '42'|int + 1 }} {{ '2.5'|float }} {{ 'x'|int }} {{ 3|string ~ '!' }}", ctx), "43 2.5 0 3!");
  EXPECT_EQ(R("{{ 'aXbX'|replace('X', '-') }} {{ '<a&b>'|e }} {{ '<i>'|safe }}", ctx),
            "a-b- &lt;a&amp;b&gt; <i>");
  EXPECT_EQ(R("{{ p|map(attribute='n')|join }} {{ p|selectattr('ok')|map(attribute='n')|list }} "
              "{{ p|rejectattr('ok')|list|length }} {{ {'z': 1, 'a': 2}|items|list }}",
              ctx),
            "ab ['a'] 1 [('z', 1), ('a', 2)]");
}

TEST(JinjaFilters, TojsonMatchesPythonJsonDumps) {
  // json.dumps(x, ensure_ascii=False) — key order kept, non-ASCII kept, no HTML escaping.
  EXPECT_EQ(R("{{ {'b': 1, 'a': [true, none, 1.0, 'é<&>'], 'c': {}} | tojson }}"),
            R"({"b": 1, "a": [true, null, 1.0, "é<&>"], "c": {}})");
  EXPECT_EQ(R("{{ [1, {'k': []}] | tojson(indent=2) }}"), "[\n  1,\n  {\n    \"k\": []\n  }\n]");
  EXPECT_EQ(R("{{ 'q\"\\\\\\n\\t\\x01' | tojson }}"), R"("q\"\\\n\t\u0001")");
  EXPECT_EQ(R("{{ '🎉é' | tojson(ensure_ascii=true) }}"), R"("\ud83c\udf89\u00e9")");
  EXPECT_EQ(R("{{ {'a': 1} | tojson(separators=(',', ':')) }}"), R"({"a":1})");
  EXPECT_EQ(R("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}"), R"({"a": 2, "b": 1})");
  EXPECT_THAT(R("{{ nope | tojson }}"), HasSubstr("not JSON serializable"));
}

TEST(JinjaTests, IsTests) {
  EXPECT_EQ(R("{{ x is defined }} {{ x is not defined }} {{ none is none }} {{ 's' is string }} "
              "{{ {} is mapping }} {{ [] is iterable }} {{ 'a' is sequence }} {{ 1.5 is number }} "
              "{{ true is number }} {{ true is true }} {{ 0 is false }} {{ 1 is integer }}"),
            "False True True True True True True True True True False True");
  EXPECT_EQ(R("{{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ 2 is in [1, 2] }} {{ 1 is eq 1 }} "
              "{{ 'AB' is upper }}"),
            "True True True True True");
}

TEST(JinjaStringMethods, PythonSemantics) {
  EXPECT_EQ(R("{{ ' a b '.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.rsplit(' ', 1) }}"),
            "['a', 'b'] ['a', 'b', '', 'c'] ['a b', 'c']");
  EXPECT_EQ(R("[{{ '\\n x \\n'.strip() }}] [{{ '--x--'.lstrip('-') }}] [{{ 'xyy'.rstrip('y') }}]"),
            "[x] [x--] [x]");
  EXPECT_EQ(R("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aaa'.replace('a', 'b', 2) }}"),
            "True True bba");
  EXPECT_EQ(R("{{ 'hi there'.title() }} {{ 'x{}y{}'.format(1, 'z') }} {{ 'héllo'.upper() }}"),
            "Hi There x1yz HÉLLO");
  EXPECT_EQ(R("{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('b', 'dflt') }} {{ {'a': 1}.keys()|list }}"),
            "1 dflt ['a']");
}

TEST(JinjaUndefined, DefaultUndefinedSemantics) {
  EXPECT_EQ(R("[{{ u }}] {{ u|length }} {{ u is defined }} {% for x in u %}x{% endfor %}{{ u ~ 'a' }}"),
            "[] 0 False a");
  EXPECT_EQ(R("[{{ d.missing }}] {{ d.missing is defined }}", R"({"d": {}})"), "[] False");
  // Anything beyond printing, testing and iterating is an error, as in jinja2.
  EXPECT_EQ(R("{{ u.attr }}"), "ERROR: template render error: line 1, column 5: 'u' is undefined");
  EXPECT_EQ(R("{{ d.m.x }}", R"({"d": {}})"),
            "ERROR: template render error: line 1, column 7: 'dict object' has no attribute 'm'");
  EXPECT_EQ(R("\n  {{ u + 1 }}"), "ERROR: template render error: line 2, column 8: 'u' is undefined");
}

TEST(JinjaErrors, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(R("ok\n{{ x|nosuch }}"), "ERROR: template syntax error: line 2, column 6: No filter named 'nosuch'.");
  EXPECT_EQ(R("{% if x %}\nno end"),
            "ERROR: template syntax error: line 2, column 7: unexpected end of template, expected "
            "'elif' or 'else' or 'endif'");
  EXPECT_EQ(R("{{ 1 + }}"), "ERROR: template syntax error: line 1, column 8: unexpected 'end of print statement'");
  EXPECT_EQ(R("{% frob %}"), "ERROR: template syntax error: line 1, column 4: unknown tag 'frob'");
  EXPECT_EQ(R("a {# open"), "ERROR: template syntax error: line 1, column 3: Missing end of comment tag");
  EXPECT_EQ(R("{{ 'unterminated }}"),
            "ERROR: template syntax error: line 1, column 4: unexpected end of template inside a string literal");
  EXPECT_EQ(R("{{ x is nosuchtest }}"), "ERROR: template syntax error: line 1, column 9: No test named 'nosuchtest'.");
}

TEST(JinjaErrors, UnsupportedConstructsAreErrorsNotWrongRenders) {
  // jinja2 supports these; we refuse them with a location instead of rendering differently.
  EXPECT_EQ(R("x\n{% filter upper %}a{% endfilter %}"),
            "ERROR: template syntax error: line 2, column 4: unsupported statement 'filter'");
  EXPECT_EQ(R("{% include 'x' %}"), "ERROR: template syntax error: line 1, column 4: unsupported statement 'include'");
  EXPECT_EQ(R("{% raw %}{{ x }}{% endraw %}"), "ERROR: template syntax error: line 1, column 1: unsupported statement 'raw'");
  EXPECT_EQ(R("{% with a = 1 %}{% endwith %}"), "ERROR: template syntax error: line 1, column 4: unsupported statement 'with'");
  EXPECT_EQ(R("{% for x in y recursive %}{% endfor %}"),
            "ERROR: template syntax error: line 1, column 15: unsupported: recursive for loops");
  EXPECT_EQ(R("{{ f(*a) }}"), "ERROR: template syntax error: line 1, column 6: unsupported: *args / **kwargs in calls");
  EXPECT_EQ(R("{{ [1]|sort }}"), "ERROR: template render error: line 1, column 8: unsupported filter 'sort'");
  EXPECT_EQ(R("{{ 'a'.center(5) }}"), "ERROR: template render error: line 1, column 14: unsupported string method 'center'");
  EXPECT_EQ(R("{{ '%s' % 1 }}"),
            "ERROR: template render error: line 1, column 9: unsupported: printf-style '%' string formatting");
}

TEST(JinjaErrors, RuntimeErrors) {
  EXPECT_EQ(R("{{ raise_exception('bad input') }}"),
            "ERROR: template render error: line 1, column 19: raise_exception: bad input");
  EXPECT_EQ(R("{{ 'a' + 1 }}"), "ERROR: template render error: line 1, column 8: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(R("{{ 1 // 0 }}"), "ERROR: template render error: line 1, column 6: integer division or modulo by zero");
  EXPECT_EQ(R("{{ [].append }}"), "<function list.append>");  // reachable, but calling it is refused:
  EXPECT_THAT(R("{{ [].append(1) }}"), HasSubstr("unsafe"));
  // An error inside a macro reports the line inside the macro.
  EXPECT_EQ(R("{% macro m() %}\n{{ nope.x }}{% endmacro %}\n{{ m() }}"),
            "ERROR: template render error: line 2, column 8: 'nope' is undefined");
}

TEST(JinjaJson, ParseAndErrors) {
  auto v = ParseJson(R"({"b": [1, 2.5, "x\u00e9\ud83c\udf89", true, null], "a": {}})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(Repr(*v), "{'b': [1, 2.5, 'xé🎉', True, None], 'a': {}}");
  EXPECT_EQ(*ToJson(*v), R"({"b": [1, 2.5, "xé🎉", true, null], "a": {}})");
  EXPECT_EQ(ParseJson("[1, 2").status().message(), "JSON: expected ',' or ']' in an array at byte 5");
  EXPECT_EQ(ParseJson("{\"a\" 1}").status().message(), "JSON: expected ':' at byte 5");
  EXPECT_EQ(ParseJson("[1] x").status().message(), "JSON: trailing characters after the JSON value at byte 4");
}

TEST(JinjaValue, FloatRepr) {
  EXPECT_EQ(FloatRepr(1.0), "1.0");
  EXPECT_EQ(FloatRepr(-0.0), "-0.0");
  EXPECT_EQ(FloatRepr(123456789.123), "123456789.123");
  EXPECT_EQ(FloatRepr(1.5e-7), "1.5e-07");
  EXPECT_EQ(FloatRepr(2.5e300), "2.5e+300");
  EXPECT_EQ(FloatRepr(1.0 / 3), "0.3333333333333333");
}

}  // namespace
}  // namespace rs::jinja

namespace rs::chat {
namespace {

using ::testing::HasSubstr;

TEST(ChatTemplate, ArgumentsJsonStringBecomesObject) {
  const char* tpl = "{% for m in messages %}{% for c in m.tool_calls or [] %}"
                    "{{ c.function.arguments is mapping }}{{ c.function.arguments|tojson }};"
                    "{% endfor %}{% endfor %}";
  auto out = Render(tpl, R"([{"role": "assistant", "content": null, "tool_calls": [
      {"function": {"name": "f", "arguments": "{\"x\": [1, \"é\"]}"}},
      {"function": {"name": "g", "arguments": {"y": 2}}},
      {"function": {"name": "h", "arguments": ""}},
      {"function": {"name": "k"}}]}])",
                    "", false, "");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, R"(True{"x": [1, "é"]};True{"y": 2};True{};True{};)");
  auto bad = Render(tpl, R"([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
      {"function": {"name": "f", "arguments": "{not json"}}]}])",
                    "", false, "");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("messages[1].tool_calls[0].function.arguments is a string but not valid JSON"));
}

TEST(ChatTemplate, ContextVariablesAndValidation) {
  const char* tpl = "{{ messages|length }} {{ tools }} {{ add_generation_prompt }} {{ enable_thinking }} {{ other }}";
  auto out = Render(tpl, R"([{"role": "user", "content": "x"}])", "", true,
                    R"({"enable_thinking": false, "other": [1]})");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "1 None True False [1]");
  EXPECT_THAT(Render(tpl, "[]", "", true, R"({"messages": 1})").status().message(),
              HasSubstr("kwarg 'messages' collides"));
  EXPECT_THAT(Render(tpl, R"({"role": "user"})", "", true, "").status().message(),
              HasSubstr("messages must be a JSON array"));
  EXPECT_THAT(Render(tpl, R"([{"content": "x"}])", "", true, "").status().message(),
              HasSubstr("messages[0] has no string 'role'"));
  EXPECT_THAT(Render(tpl, "[]", R"({"a": 1})", true, "").status().message(),
              HasSubstr("tools must be a JSON array"));
}

// The built-in template against spec §8, piece by piece.
std::string Builtin(const std::string& messages, const std::string& tools = "",
                    bool gen = true, const std::string& kwargs = "") {
  auto out = Render(kDefaultChatTemplate, messages, tools, gen, kwargs);
  return out.ok() ? *out : "ERROR: " + std::string(out.status().message());
}

TEST(DefaultChatTemplate, SystemUserAndGenerationPrompt) {
  EXPECT_EQ(Builtin(R"([{"role": "system", "content": " S "}, {"role": "user", "content": " hi "}])"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n");
  EXPECT_EQ(Builtin(R"([{"role": "user", "content": "hi"}])", "", true, R"({"enable_thinking": false})"),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(Builtin(R"([{"role": "user", "content": "hi"}])", "", false), "<|im_start|>user\nhi<|im_end|>\n");
  EXPECT_EQ(Builtin(R"([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])", "", false),
            "<|im_start|>user\nab<|im_end|>\n");
  EXPECT_THAT(Builtin(R"([{"role": "user", "content": [{"type": "image_url"}]}])"),
              HasSubstr("Only text content parts"));
  EXPECT_THAT(Builtin(R"([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}])"),
              HasSubstr("only allowed as the first message"));
}

TEST(DefaultChatTemplate, ToolsSectionAndXmlToolCalls) {
  std::string out = Builtin(
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "w?"},
          {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"function": {"name": "get", "arguments": "{\"city\": \"Zürich\", \"days\": 2, \"opts\": {\"a\": [1]}}"}},
            {"function": {"name": "now", "arguments": {}}}]},
          {"role": "tool", "content": " 12C "}, {"role": "tool", "content": "noon"}])",
      R"([{"type": "function", "function": {"name": "get", "parameters": {}}}])");
  EXPECT_THAT(out, HasSubstr("<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n"
                             "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get\", \"parameters\": {}}}\n</tools>"));
  EXPECT_THAT(out, HasSubstr("</IMPORTANT>\n\nBe brief.<|im_end|>\n"));
  // After the last user query: reasoning block (empty here), content, \n\n, then the calls.
  EXPECT_THAT(out, HasSubstr("<|im_start|>assistant\n<think>\n\n</think>\n\nChecking.\n\n<tool_call>\n<function=get>\n"
                             "<parameter=city>\nZürich\n</parameter>\n<parameter=days>\n2\n</parameter>\n"
                             "<parameter=opts>\n{\"a\": [1]}\n</parameter>\n</function>\n</tool_call>\n"
                             "<tool_call>\n<function=now>\n</function>\n</tool_call><|im_end|>\n"));
  // Consecutive tool results: one user turn.
  EXPECT_THAT(out, HasSubstr("<|im_start|>user\n<tool_response>\n12C\n</tool_response>\n<tool_response>\nnoon\n"
                             "</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n"));
}

TEST(DefaultChatTemplate, HistoryDropsPastReasoning) {
  std::string out = Builtin(
      R"([{"role": "user", "content": "q1"},
          {"role": "assistant", "content": "<think>\nold thoughts\n</think>\n\nA1"},
          {"role": "user", "content": "q2"},
          {"role": "assistant", "content": "A2", "reasoning_content": "\nnew thoughts\n"}])",
      "", false);
  EXPECT_EQ(out,
            "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
            "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\nA2<|im_end|>\n");
  // A user turn that is only a tool response does not start a new query.
  std::string chain = Builtin(
      R"([{"role": "user", "content": "q"},
          {"role": "assistant", "content": "", "reasoning_content": "r1", "tool_calls": [{"function": {"name": "t", "arguments": {"x": "v"}}}]},
          {"role": "user", "content": "<tool_response>\nok\n</tool_response>"},
          {"role": "assistant", "content": "done", "reasoning_content": "r2"}])",
      "", false);
  EXPECT_THAT(chain, HasSubstr("<|im_start|>assistant\n<think>\nr1\n</think>\n\n<tool_call>\n<function=t>\n"
                               "<parameter=x>\nv\n</parameter>\n</function>\n</tool_call><|im_end|>\n"));
  EXPECT_THAT(chain, HasSubstr("<|im_start|>assistant\n<think>\nr2\n</think>\n\ndone<|im_end|>\n"));
}

}  // namespace
}  // namespace rs::chat

namespace rs::jinja {
namespace {

TEST(JinjaErrors, DeepNestingIsRefusedNotACrash) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_THAT(R(deep), ::testing::HasSubstr("nested deeper than 200 levels"));
  std::string negs = "{{ " + std::string(5000, '-') + "1 }}";
  EXPECT_THAT(R(negs), ::testing::HasSubstr("nested deeper than 200 levels"));
  std::string ifs;
  for (int i = 0; i < 1000; ++i) ifs += "{% if 1 %}";
  EXPECT_THAT(R(ifs), ::testing::HasSubstr("nested deeper than 200 levels"));
  EXPECT_EQ(R("{{ " + std::string(50, '(') + "7" + std::string(50, ')') + " }}"), "7");
}

}  // namespace
}  // namespace rs::jinja
