// Thinking-budget controller (see thinking_budget.h).
#include "coordinator/text/thinking_budget.h"

#include <algorithm>
#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace rs {
namespace {
std::atomic<int64_t> g_cut_offs{0};
}  // namespace

int64_t ThinkingBudget::CutOffsTotal() { return g_cut_offs.load(std::memory_order_relaxed); }

absl::StatusOr<ThinkingBudget> ThinkingBudget::Create(ThinkingBudgetOptions options) {
  if (options.budget >= 0) {
    if (options.think_close_id < 0)
      return absl::InvalidArgumentError("thinking budget: think_close_id is not set");
    const auto& seq = options.close_sequence;
    if (std::find(seq.begin(), seq.end(), options.think_close_id) == seq.end())
      return absl::InvalidArgumentError(absl::StrCat(
          "thinking budget: close_sequence (", seq.size(),
          " ids) does not contain the </think> id ", options.think_close_id));
  }
  ThinkingBudget b;
  b.opt_ = std::move(options);
  b.in_reasoning_ = b.opt_.prompt_opened_think;
  b.MaybeStartForcing();
  return b;
}

std::optional<int32_t> ThinkingBudget::Forced() const {
  if (!forcing_) return std::nullopt;
  return opt_.close_sequence[force_pos_];
}

void ThinkingBudget::MaybeStartForcing() {
  if (forcing_ || !in_reasoning_ || in_tool_call_ || opt_.budget < 0) return;
  if (reasoning_tokens_ < opt_.budget) return;
  forcing_ = true;
  force_pos_ = 0;
}

void ThinkingBudget::Observe(int32_t token) {
  if (forcing_) {
    ++forced_total_;
    if (token == opt_.close_sequence[force_pos_]) {
      ++force_pos_;
    } else {
      // The caller appended something else (e.g. it ended the request): stop forcing.
      forcing_ = false;
    }
    if (token == opt_.think_close_id && in_reasoning_) {
      in_reasoning_ = false;
      if (!cut_off_) {
        cut_off_ = true;
        g_cut_offs.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (forcing_ && force_pos_ >= opt_.close_sequence.size()) forcing_ = false;
    return;
  }
  if (in_tool_call_) {
    if (token == opt_.tool_call_close_id) {
      in_tool_call_ = false;
      MaybeStartForcing();
    }
    return;
  }
  if (!in_reasoning_) {
    if (token == opt_.think_open_id && opt_.think_open_id >= 0) {
      in_reasoning_ = true;
      MaybeStartForcing();
    }
    return;
  }
  // Inside reasoning.
  if (token == opt_.think_close_id) {
    in_reasoning_ = false;
    return;
  }
  if (token == opt_.tool_call_open_id && opt_.tool_call_open_id >= 0) {
    in_tool_call_ = true;
    return;
  }
  if (token == opt_.think_open_id) return;  // a repeated <think> is not reasoning text
  ++reasoning_tokens_;
  MaybeStartForcing();
}

}  // namespace rs
