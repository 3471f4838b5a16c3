#include "rollout/schedule.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace tiller::rollout {

Schedule::Schedule(const std::vector<int64_t>& prompt_lengths, StopRules rules) : rules_(std::move(rules)) {
  if (!rules_.max_new_tokens_each.empty() && rules_.max_new_tokens_each.size() != prompt_lengths.size()) {
    throw std::invalid_argument("maxNewTokens: " + std::to_string(rules_.max_new_tokens_each.size()) + " limits for " +
                                std::to_string(prompt_lengths.size()) + " prompts");
  }
  for (size_t i = 0; i < prompt_lengths.size(); ++i) {
    SequenceState s;
    s.prompt_length = prompt_lengths[i];
    s.finished = rules_.limit(i) == 0;
    if (s.finished) s.finish_reason = "length";
    sequences_.push_back(std::move(s));
  }
}

std::vector<int64_t> Schedule::running() const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < sequences_.size(); ++i) {
    if (!sequences_[i].finished) out.push_back(static_cast<int64_t>(i));
  }
  return out;
}

int64_t Schedule::next_offset(int64_t i) const {
  const auto& s = sequences_[i];
  return s.prompt_length + static_cast<int64_t>(s.tokens.size()) - 1;
}

void Schedule::append(int64_t i, int64_t token, float logprob) {
  auto& s = sequences_[i];
  // The prefill samples every prompt; one with a limit of 0 keeps nothing.
  if (s.finished) return;
  s.tokens.push_back(token);
  s.logprobs.push_back(logprob);
  const auto& stops = rules_.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    s.finished = true;
    s.finish_reason = "stop";
  } else if (static_cast<int64_t>(s.tokens.size()) >= rules_.limit(static_cast<size_t>(i))) {
    s.finished = true;
    s.finish_reason = "length";
  }
}

int64_t Schedule::cache_length() const {
  int64_t longest = 0;
  for (size_t i = 0; i < sequences_.size(); ++i) longest = std::max(longest, sequences_[i].prompt_length + rules_.limit(i));
  return longest;
}

}  // namespace tiller::rollout
