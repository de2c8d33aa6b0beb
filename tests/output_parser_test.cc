// Streaming output parser (reasoning / content / tool calls) and the thinking-budget controller.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "coordinator/text/output_parser.h"
#include "coordinator/text/thinking_budget.h"

namespace rs {
namespace {

// Qwen3.5 tag ids (spec §7).
constexpr int32_t kToolCallOpenId = 248058;
constexpr int32_t kToolCallCloseId = 248059;
constexpr int32_t kThinkOpenId = 248068;
constexpr int32_t kThinkCloseId = 248069;
constexpr int32_t kText = 1000;  // any ordinary token id

struct Piece {
  int32_t id;
  std::string text;
};
Piece T(std::string s) { return {kText, std::move(s)}; }
// Special tokens arrive with an empty piece (a detokenizer that skips them): the id decides.
const Piece kThink{kThinkOpenId, ""};
const Piece kEndThink{kThinkCloseId, ""};
const Piece kCall{kToolCallOpenId, ""};
const Piece kEndCall{kToolCallCloseId, ""};

struct Collected {
  std::string reasoning, content;
  std::vector<ParsedToolCall> calls;
  std::vector<std::string> failed;  // content events with parse_failed
  std::vector<OutputEvent> events;
};

void Collect(const std::vector<OutputEvent>& evs, Collected* c) {
  for (const OutputEvent& e : evs) {
    c->events.push_back(e);
    switch (e.kind) {
      case OutputEvent::Kind::kReasoning:
        c->reasoning += e.text;
        break;
      case OutputEvent::Kind::kContent:
        if (e.parse_failed) c->failed.push_back(e.text);
        else c->content += e.text;
        break;
      case OutputEvent::Kind::kToolCall:
        c->calls.push_back(e.call);
        break;
    }
  }
}

OutputParserOptions QwenOptions(bool prompt_opened_think = true) {
  OutputParserOptions o;
  o.prompt_opened_think = prompt_opened_think;
  o.think_open_id = kThinkOpenId;
  o.think_close_id = kThinkCloseId;
  o.tool_call_open_id = kToolCallOpenId;
  o.tool_call_close_id = kToolCallCloseId;
  o.tools = {{"get_weather",
              R"({"type": "object", "properties": {"city": {"type": "string"},
                  "days": {"type": "integer"}, "metric": {"type": "boolean"}}})"},
             {"run", R"({"type": "object", "properties": {"cmd": {"type": "string"}}})"}};
  return o;
}

Collected RunParser(const std::vector<Piece>& pieces, OutputParserOptions opts = QwenOptions(),
              OutputParser* keep = nullptr) {
  absl::StatusOr<OutputParser> p = OutputParser::Create(std::move(opts));
  EXPECT_TRUE(p.ok()) << p.status();
  Collected c;
  for (const Piece& piece : pieces) Collect(p->Feed(piece.id, piece.text), &c);
  Collect(p->Finish(), &c);
  if (keep != nullptr) *keep = *std::move(p);
  return c;
}

// Splits text into 1-byte ordinary tokens (tags spelled as text).
std::vector<Piece> Chars(std::string_view s) {
  std::vector<Piece> out;
  for (char ch : s) out.push_back(T(std::string(1, ch)));
  return out;
}

TEST(OutputParser, ReasoningThenContentWithPromptOpenedThink) {
  OutputParser p = *OutputParser::Create(QwenOptions());
  Collected c = RunParser({T("Let me"), T(" think."), T("\n"), kEndThink, T("\n\n"), T("The answer"),
                     T(" is 4.")},
                    QwenOptions(), &p);
  EXPECT_EQ(c.reasoning, "Let me think.");
  EXPECT_EQ(c.content, "The answer is 4.");
  EXPECT_TRUE(c.calls.empty());
  EXPECT_EQ(p.reasoning_tokens(), 4);  // three text pieces + </think>
  EXPECT_FALSE(p.in_reasoning());
}

TEST(OutputParser, ToolCallAfterReasoningXmlForm) {
  Collected c = RunParser({T("I need the weather.\n"), kEndThink, T("\n\n"), T("Checking."), T("\n\n"),
                     kCall, T("\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"),
                     T("<parameter=days>\n3\n</parameter>\n</function>\n"), kEndCall});
  EXPECT_EQ(c.reasoning, "I need the weather.");
  EXPECT_EQ(c.content, "Checking.");
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].name, "get_weather");
  EXPECT_EQ(c.calls[0].arguments, R"({"city": "Paris", "days": 3})");
  EXPECT_EQ(c.calls[0].id, "call_0");
  EXPECT_TRUE(c.failed.empty());
}

TEST(OutputParser, ToolCallInsideReasoningIsAToolCall) {
  OutputParser p = *OutputParser::Create(QwenOptions());
  Collected c = RunParser({T("First I look it up."), T("\n"), kCall,
                     T("\n<function=run>\n<parameter=cmd>\nls -la\n</parameter>\n</function>\n"),
                     kEndCall, T("\n"), T("Then I answer."), kEndThink, T("Done.")},
                    QwenOptions(), &p);
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].name, "run");
  EXPECT_EQ(c.calls[0].arguments, R"({"cmd": "ls -la"})");
  EXPECT_EQ(c.reasoning, "First I look it up.Then I answer.");
  EXPECT_EQ(c.reasoning.find("tool_call"), std::string::npos);
  EXPECT_EQ(c.reasoning.find("function"), std::string::npos);
  EXPECT_EQ(c.content, "Done.");
  // Event order: reasoning, call, reasoning, content.
  ASSERT_EQ(c.events.size(), 4u);
  EXPECT_EQ(c.events[0].kind, OutputEvent::Kind::kReasoning);
  EXPECT_EQ(c.events[1].kind, OutputEvent::Kind::kToolCall);
  EXPECT_EQ(c.events[2].kind, OutputEvent::Kind::kReasoning);
  EXPECT_EQ(c.events[3].kind, OutputEvent::Kind::kContent);
  EXPECT_EQ(p.reasoning_tokens(), 5);  // 2 before the call, "\n", "Then I answer.", </think>
}

TEST(OutputParser, TwoParallelCalls) {
  Collected c = RunParser({kEndThink, T("\n\n"), kCall,
                     T("\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                       "</function>\n"),
                     kEndCall, T("\n"), kCall,
                     T("\n<function=get_weather>\n<parameter=city>\nBerlin\n</parameter>\n"
                       "<parameter=metric>\ntrue\n</parameter>\n</function>\n"),
                     kEndCall});
  EXPECT_EQ(c.content, "");
  EXPECT_EQ(c.reasoning, "");
  ASSERT_EQ(c.calls.size(), 2u);
  EXPECT_EQ(c.calls[0].arguments, R"({"city": "Paris"})");
  EXPECT_EQ(c.calls[1].arguments, R"({"city": "Berlin", "metric": true})");
  EXPECT_EQ(c.calls[0].id, "call_0");
  EXPECT_EQ(c.calls[1].id, "call_1");
}

const char kSpelledOutput[] =
    "Plan: a < b and x<y.\n</think>\n\nSure, <b>bold</b> text.\n\n<tool_call>\n"
    "<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n"
    "<parameter=days>\n10\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
    "<function=run>\n<parameter=cmd>\necho '<think>'\n</parameter>\n</function>\n"
    "</tool_call>";

TEST(OutputParser, CallSplitIntoOneCharacterTokens) {
  Collected whole = RunParser({T(kSpelledOutput)});
  Collected tiny = RunParser(Chars(kSpelledOutput));
  for (const Collected* c : {&whole, &tiny}) {
    EXPECT_EQ(c->reasoning, "Plan: a < b and x<y.");
    EXPECT_EQ(c->content, "Sure, <b>bold</b> text.");
    ASSERT_EQ(c->calls.size(), 2u);
    EXPECT_EQ(c->calls[0].arguments, R"({"city": "São Paulo", "days": 10})");
    EXPECT_EQ(c->calls[1].arguments, R"({"cmd": "echo '<think>'"})");
    EXPECT_TRUE(c->failed.empty());
  }
  // Nothing emitted was ever a piece of a tag.
  for (const OutputEvent& e : tiny.events) {
    for (const char* tag_start : {"<tool", "</tool", "<thi", "</thi"})
      EXPECT_EQ(e.text.find(tag_start), std::string::npos) << e.text;
  }
}

TEST(OutputParser, AnySplitGivesTheSameResult) {
  const std::string text = std::string(kSpelledOutput) + "\n\nAfter <tool_call>\n{\"name\": " +
                           "\"run\", \"arguments\": {\"cmd\": \"a\\nb\"}}\n</tool_call> bye\n";
  const Collected whole = RunParser({T(text)});
  ASSERT_EQ(whole.calls.size(), 3u);
  EXPECT_EQ(whole.content, "Sure, <b>bold</b> text.After  bye");
  uint32_t state = 12345;
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<Piece> pieces;
    for (size_t i = 0; i < text.size();) {
      state = state * 1664525u + 1013904223u;
      const size_t len = 1 + (state >> 16) % 9;
      pieces.push_back(T(text.substr(i, len)));
      i += len;
    }
    const Collected c = RunParser(pieces);
    ASSERT_EQ(c.reasoning, whole.reasoning) << "trial " << trial;
    ASSERT_EQ(c.content, whole.content) << "trial " << trial;
    ASSERT_EQ(c.calls.size(), whole.calls.size());
    for (size_t k = 0; k < c.calls.size(); ++k) {
      ASSERT_EQ(c.calls[k].name, whole.calls[k].name);
      ASSERT_EQ(c.calls[k].arguments, whole.calls[k].arguments);
    }
  }
}

TEST(OutputParser, HeldPrefixIsReleasedWhenDisambiguated) {
  OutputParser p = *OutputParser::Create(QwenOptions(/*prompt_opened_think=*/false));
  std::vector<OutputEvent> ev = p.Feed(kText, "x <");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "x ");  // "<" held: could start a tag
  ev = p.Feed(kText, "to");  // "<to" may still become "<tool_call>"
  EXPECT_TRUE(ev.empty());
  ev = p.Feed(kText, "p>");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "<top>");
  ev = p.Feed(kText, " <tool_ca");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, " ");
  ev = p.Finish();  // end of generation: the held text was text after all
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "<tool_ca");
  EXPECT_FALSE(ev[0].parse_failed);
}

TEST(OutputParser, UnclosedThinkAtMaxTokensStaysReasoning) {
  OutputParser p = *OutputParser::Create(QwenOptions());
  Collected c = RunParser({T("Step 1: "), T("consider"), T(" the </thi")}, QwenOptions(), &p);
  EXPECT_EQ(c.reasoning, "Step 1: consider the </thi");
  EXPECT_EQ(c.content, "");
  EXPECT_TRUE(p.in_reasoning());
  EXPECT_EQ(p.reasoning_tokens(), 3);
}

TEST(OutputParser, MalformedXmlBecomesFlaggedContent) {
  OutputParser p = *OutputParser::Create(QwenOptions());
  const std::string body = "\n<function=get_weather>\n<city>Paris</city>\n</function>\n";
  Collected c = RunParser({kEndThink, T("Let me check."), kCall, T(body), kEndCall, T(" Sorry.")},
                    QwenOptions(), &p);
  EXPECT_TRUE(c.calls.empty());
  ASSERT_EQ(c.failed.size(), 1u);
  EXPECT_EQ(c.failed[0], "<tool_call>" + body + "</tool_call>");
  EXPECT_EQ(c.content, "Let me check. Sorry.");
  EXPECT_EQ(p.parse_failures(), 1);

  // Other malformed bodies.
  for (const char* bad : {"\nget_weather(city='Paris')\n", "<function=>\n</function>",
                          "<function=run>\n<parameter=cmd>\nls\n</parameter>\n</function>\nextra",
                          "{\"name\": \"run\", \"arguments\": [1]}", "{not json}"}) {
    Collected m = RunParser({kEndThink, kCall, T(bad), kEndCall});
    EXPECT_TRUE(m.calls.empty()) << bad;
    ASSERT_EQ(m.failed.size(), 1u) << bad;
    EXPECT_EQ(m.failed[0], std::string("<tool_call>") + bad + "</tool_call>");
  }
}

TEST(OutputParser, UnclosedToolCallAtEndIsFlaggedContent) {
  Collected c = RunParser({kEndThink, T("Ok."), kCall, T("\n<function=run>\n<parameter=cmd>\nls")});
  EXPECT_TRUE(c.calls.empty());
  ASSERT_EQ(c.failed.size(), 1u);
  EXPECT_EQ(c.failed[0], "<tool_call>\n<function=run>\n<parameter=cmd>\nls");
  EXPECT_EQ(c.content, "Ok.");
}

TEST(OutputParser, JsonFormCall) {
  Collected c = RunParser({kEndThink, kCall,
                     T("\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
                       "\"days\": 2, \"opts\": {\"a\": [1, 2.5, null]}}}\n"),
                     kEndCall});
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].name, "get_weather");
  EXPECT_EQ(c.calls[0].arguments, R"({"city": "Paris", "days": 2, "opts": {"a": [1, 2.5, null]}})");
  // "arguments" given as a JSON string holding the object.
  Collected s = RunParser({kEndThink, kCall,
                     T(R"({"name": "run", "arguments": "{\"cmd\": \"ls\"}"})"), kEndCall});
  ASSERT_EQ(s.calls.size(), 1u);
  EXPECT_EQ(s.calls[0].arguments, R"({"cmd": "ls"})");
}

TEST(OutputParser, ModelOpenedThinkWhenPromptDidNot) {
  Collected c = RunParser({kThink, T("\nhmm\n"), kEndThink, T("\n\nHi!")},
                    QwenOptions(/*prompt_opened_think=*/false));
  EXPECT_EQ(c.reasoning, "hmm");
  EXPECT_EQ(c.content, "Hi!");
}

TEST(OutputParser, EnableThinkingFalseOutputIsAllContent) {
  OutputParser p = *OutputParser::Create(QwenOptions(/*prompt_opened_think=*/false));
  Collected c = RunParser({T("Hello"), T(", world."), T("\nLine two.")},
                    QwenOptions(/*prompt_opened_think=*/false), &p);
  EXPECT_EQ(c.reasoning, "");
  EXPECT_EQ(c.content, "Hello, world.\nLine two.");
  EXPECT_EQ(p.reasoning_tokens(), 0);
  // A stray </think> in non-thinking output is markup, not text.
  Collected s = RunParser({T("A"), kEndThink, T("B")}, QwenOptions(false));
  EXPECT_EQ(s.content, "AB");
}

TEST(OutputParser, ParameterTypesFollowTheSchema) {
  OutputParserOptions o = QwenOptions();
  o.tools = {{"f", R"({"type": "object", "properties": {
      "s": {"type": "string"}, "i": {"type": "integer"}, "n": {"type": "number"},
      "b": {"type": "boolean"}, "o": {"type": "object"}, "a": {"type": "array"},
      "opt": {"type": ["integer", "null"]}, "u": {"anyOf": [{"type": "number"}, {"type": "string"}]},
      "e": {"enum": ["x", "y"]}}})"}};
  auto param = [](const std::string& name, const std::string& value) {
    return "<parameter=" + name + ">\n" + value + "\n</parameter>\n";
  };
  const std::string body = "<function=f>\n" + param("s", "123") + param("i", "42") +
                           param("n", "-2.5e3") + param("b", "True") + param("o", "{\"k\": [1]}") +
                           param("a", "[1, \"two\"]") + param("opt", "null") +
                           param("u", "not a number") + param("e", "x") +
                           param("extra", "{\"raw\": 1}") + "</function>";
  Collected c = RunParser({kEndThink, kCall, T(body), kEndCall}, o);
  ASSERT_EQ(c.calls.size(), 1u) << (c.failed.empty() ? "" : c.failed[0]);
  EXPECT_EQ(c.calls[0].arguments,
            R"({"s": "123", "i": 42, "n": -2500.0, "b": true, "o": {"k": [1]}, )"
            R"("a": [1, "two"], "opt": null, "u": "not a number", "e": "x", )"
            R"("extra": "{\"raw\": 1}"})");
  // Values that do not parse as their declared type stay raw strings.
  const std::string bad = "<function=f>\n" + param("i", "forty-two") + param("o", "{broken") +
                          param("b", "yes") + param("a", "{\"not\": \"array\"}") + "</function>";
  Collected d = RunParser({kEndThink, kCall, T(bad), kEndCall}, o);
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].arguments,
            R"({"i": "forty-two", "o": "{broken", "b": "yes", "a": "{\"not\": \"array\"}"})");
}

TEST(OutputParser, MultiLineValuesKeepInnerNewlinesAndStripOneEach) {
  Collected c = RunParser({kEndThink, kCall,
                     T("<function=run>\n<parameter=cmd>\n\nline1\nline2\n\n</parameter>\n"
                       "</function>"),
                     kEndCall});
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].arguments, R"({"cmd": "\nline1\nline2\n"})");
}

TEST(OutputParser, MissingClosingParameterTagIsTolerated) {
  Collected c = RunParser({kEndThink, kCall,
                     T("<function=get_weather>\n<parameter=city>\nRome\n<parameter=days>\n2\n"
                       "</function>"),
                     kEndCall});
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].arguments, R"({"city": "Rome", "days": 2})");
}

TEST(OutputParser, TagsAsTextCanBeDisabled) {
  OutputParserOptions o = QwenOptions(false);
  o.match_tags_in_text = false;
  Collected c = RunParser({T("Use <tool_call> and </think> literally."), kCall,
                     T("<function=run>\n<parameter=cmd>\nx\n</parameter>\n</function>"), kEndCall},
                    o);
  EXPECT_EQ(c.content, "Use <tool_call> and </think> literally.");
  ASSERT_EQ(c.calls.size(), 1u);
}

TEST(OutputParser, ToolSpecsFromOpenAiJson) {
  absl::StatusOr<std::vector<ToolSpec>> tools = ToolSpecsFromOpenAiJson(
      R"([{"type": "function", "function": {"name": "get_weather", "description": "d",
          "parameters": {"type": "object", "properties": {"days": {"type": "integer"}}}}}])");
  ASSERT_TRUE(tools.ok()) << tools.status();
  ASSERT_EQ(tools->size(), 1u);
  EXPECT_EQ((*tools)[0].name, "get_weather");
  EXPECT_EQ((*tools)[0].parameters_schema,
            R"({"type":"object","properties":{"days":{"type":"integer"}}})");
  EXPECT_FALSE(ToolSpecsFromOpenAiJson("[{\"type\": \"function\"}]").ok());
  OutputParserOptions o;
  o.tools = {{"t", "{broken"}};
  absl::StatusOr<OutputParser> p = OutputParser::Create(o);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("tool 't'"), std::string::npos);
}

// ---- thinking budget ----------------------------------------------------------------------

const std::vector<int32_t> kCloseSeq = {198, kThinkCloseId, 271};  // "\n", </think>, "\n\n"

ThinkingBudgetOptions BudgetOptions(int64_t budget, bool opened = true) {
  ThinkingBudgetOptions o;
  o.budget = budget;
  o.prompt_opened_think = opened;
  o.think_open_id = kThinkOpenId;
  o.think_close_id = kThinkCloseId;
  o.tool_call_open_id = kToolCallOpenId;
  o.tool_call_close_id = kToolCallCloseId;
  o.close_sequence = kCloseSeq;
  return o;
}

// Runs the controller against a "model" that would produce `model` tokens in order; returns
// the sequence actually appended (forced tokens replace sampled ones).
std::vector<int32_t> Drive(ThinkingBudget* b, const std::vector<int32_t>& model) {
  std::vector<int32_t> seq;
  size_t next = 0;
  while (next < model.size() || b->Forced()) {
    int32_t tok;
    if (auto f = b->Forced()) {
      tok = *f;
    } else {
      tok = model[next++];
    }
    b->Observe(tok);
    seq.push_back(tok);
  }
  return seq;
}

TEST(ThinkingBudget, ForcesCloseWhenBudgetReached) {
  const int64_t before = ThinkingBudget::CutOffsTotal();
  ThinkingBudget b = *ThinkingBudget::Create(BudgetOptions(3));
  std::vector<int32_t> seq = Drive(&b, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(seq, (std::vector<int32_t>{1, 2, 3, 198, kThinkCloseId, 271, 4, 5, 6}));
  EXPECT_TRUE(b.cut_off());
  EXPECT_FALSE(b.in_reasoning());
  EXPECT_EQ(b.reasoning_tokens(), 3);
  EXPECT_EQ(b.forced_tokens(), 3);
  EXPECT_EQ(ThinkingBudget::CutOffsTotal(), before + 1);
}

TEST(ThinkingBudget, ModelClosingInTimeIsNotCut) {
  ThinkingBudget b = *ThinkingBudget::Create(BudgetOptions(5));
  std::vector<int32_t> seq = Drive(&b, {1, 2, kThinkCloseId, 7, 8, 9, 10, 11, 12});
  EXPECT_EQ(seq, (std::vector<int32_t>{1, 2, kThinkCloseId, 7, 8, 9, 10, 11, 12}));
  EXPECT_FALSE(b.cut_off());
  EXPECT_EQ(b.reasoning_tokens(), 2);
}

TEST(ThinkingBudget, ZeroBudgetMeansNoReasoning) {
  ThinkingBudget b = *ThinkingBudget::Create(BudgetOptions(0));
  ASSERT_TRUE(b.Forced().has_value());  // before the first sampled token
  EXPECT_EQ(*b.Forced(), 198);
  std::vector<int32_t> seq = Drive(&b, {5, 6});
  EXPECT_EQ(seq, (std::vector<int32_t>{198, kThinkCloseId, 271, 5, 6}));
  EXPECT_EQ(b.reasoning_tokens(), 0);
  // Rendered with enable_thinking=false: nothing is forced unless the model opens <think>.
  ThinkingBudget off = *ThinkingBudget::Create(BudgetOptions(0, /*opened=*/false));
  EXPECT_FALSE(off.Forced().has_value());
  EXPECT_EQ(Drive(&off, {5, kThinkOpenId, 6}),
            (std::vector<int32_t>{5, kThinkOpenId, 198, kThinkCloseId, 271, 6}));
}

TEST(ThinkingBudget, ToolCallInsideReasoningIsNotCut) {
  ThinkingBudget b = *ThinkingBudget::Create(BudgetOptions(2));
  std::vector<int32_t> seq =
      Drive(&b, {1, kToolCallOpenId, 50, 51, 52, kToolCallCloseId, 2, 3, 4});
  // Budget 2: token 1 counts, the call does not, token 2 reaches the budget.
  EXPECT_EQ(seq, (std::vector<int32_t>{1, kToolCallOpenId, 50, 51, 52, kToolCallCloseId, 2, 198,
                                       kThinkCloseId, 271, 3, 4}));
  ThinkingBudget c = *ThinkingBudget::Create(BudgetOptions(1));
  // Budget reached by the last token before the call opens: forced right after </tool_call>.
  std::vector<int32_t> seq2 = Drive(&c, {kToolCallOpenId, 50, kToolCallCloseId, 9});
  EXPECT_EQ(seq2, (std::vector<int32_t>{kToolCallOpenId, 50, kToolCallCloseId, 9, 198,
                                        kThinkCloseId, 271}));
}

TEST(ThinkingBudget, UnlimitedNeverForces) {
  ThinkingBudget b = *ThinkingBudget::Create(BudgetOptions(-1));
  std::vector<int32_t> model(1000, 7);
  EXPECT_EQ(Drive(&b, model), model);
  EXPECT_EQ(b.reasoning_tokens(), 1000);
  EXPECT_TRUE(b.in_reasoning());
}

TEST(ThinkingBudget, RejectsCloseSequenceWithoutThinkClose) {
  ThinkingBudgetOptions o = BudgetOptions(4);
  o.close_sequence = {198, 271};
  absl::StatusOr<ThinkingBudget> b = ThinkingBudget::Create(o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("248069"), std::string::npos);
}

TEST(ThinkingBudget, ParserSeesForcedCloseAsEndOfReasoning) {
  ThinkingBudget b = *ThinkingBudget::Create(BudgetOptions(2));
  OutputParser p = *OutputParser::Create(QwenOptions());
  auto piece = [](int32_t id) -> std::string {
    if (id == 198) return "\n";
    if (id == 271) return "\n\n";
    if (id == kThinkCloseId) return "</think>";
    return "w" + std::to_string(id) + " ";
  };
  Collected c;
  for (int32_t tok : Drive(&b, {1, 2, 3, 4})) Collect(p.Feed(tok, piece(tok)), &c);
  Collect(p.Finish(), &c);
  EXPECT_EQ(c.reasoning, "w1 w2 ");
  EXPECT_EQ(c.content, "w3 w4 ");
}

}  // namespace
}  // namespace rs
