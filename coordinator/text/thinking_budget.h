// Thinking budget: a per-request limit on reasoning tokens (../shared/spec/qwen35.md §8).
//
// The controller watches the token ids of one sequence (sampled and forced alike, in order)
// and, once `budget` reasoning tokens have been generated inside an open <think>, asks the
// caller to force a closing sequence (default text "\n</think>\n\n", given as ids by the
// tokenizer) instead of sampling. After the last forced id the model continues with the answer.
//
// Use per step:
//     if (auto id = budget.Forced()) next = *id; else next = sample(...);
//     budget.Observe(next);
//
// Details:
//   - Reasoning is open from the start when the prompt opened <think> (Qwen3.5 thinking mode),
//     and whenever the model emits <think>; it closes at </think>.
//   - A tool call inside reasoning (<tool_call> ... </tool_call>) is never cut: its tokens do not
//     count, and a budget reached just before it forces the close right after </tool_call>.
//   - budget < 0: unlimited. budget 0: no reasoning at all; with an opened <think> the close is
//     forced before the first sampled token ("<think>\n" + "\n</think>\n\n" spells the same
//     text as the enable_thinking=false prompt). The better route for budget 0 is for the chat
//     layer to render the prompt with enable_thinking=false (the empty think block the model was
//     trained on, with its own tokenisation, and no forced steps); then construct this
//     controller with prompt_opened_think = false and it forces nothing unless the model opens
//     <think> itself, in which case it closes it at once.
//   - cut_off(): the budget ended this request's reasoning; CutOffsTotal() counts such requests
//     process-wide (for metrics).
//
// Not thread-safe: one controller per sequence.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rs {

inline constexpr std::string_view kDefaultThinkingCloseText = "\n</think>\n\n";

struct ThinkingBudgetOptions {
  int64_t budget = -1;              // reasoning tokens allowed; < 0 unlimited, 0 none
  bool prompt_opened_think = true;  // the prompt ends inside an open <think>
  int32_t think_open_id = -1;       // 248068 for Qwen3.5
  int32_t think_close_id = -1;      // 248069
  int32_t tool_call_open_id = -1;   // 248058 (-1: no tool-call protection)
  int32_t tool_call_close_id = -1;  // 248059
  // Ids to force when the budget runs out: the tokenizer's encoding of
  // kDefaultThinkingCloseText (with special tokens parsed). Must contain think_close_id.
  std::vector<int32_t> close_sequence;
};

class ThinkingBudget {
 public:
  // InvalidArgument if a limited budget has no usable close_sequence.
  static absl::StatusOr<ThinkingBudget> Create(ThinkingBudgetOptions options);

  // The id the caller must append next instead of sampling, if any.
  std::optional<int32_t> Forced() const;
  // Every token appended to the sequence (sampled or forced), in order.
  void Observe(int32_t token);

  bool in_reasoning() const { return in_reasoning_; }
  int64_t reasoning_tokens() const { return reasoning_tokens_; }  // sampled, inside <think>
  bool cut_off() const { return cut_off_; }
  int64_t forced_tokens() const { return forced_total_; }

  static int64_t CutOffsTotal();

 private:
  ThinkingBudget() = default;
  void MaybeStartForcing();

  ThinkingBudgetOptions opt_;
  bool in_reasoning_ = false;
  bool in_tool_call_ = false;
  bool forcing_ = false;
  size_t force_pos_ = 0;
  int64_t reasoning_tokens_ = 0;
  int64_t forced_total_ = 0;
  bool cut_off_ = false;
};

}  // namespace rs
