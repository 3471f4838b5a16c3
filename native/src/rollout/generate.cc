#include "rollout/generate.h"

#include <ATen/CPUGeneratorImpl.h>

#include <stdexcept>

#include "rollout/kv_cache.h"

namespace tiller::rollout {
namespace {

// Runs the model on `batch` and samples one token from the last position of each sequence.
void step(const models::CausalLM& model, const models::PackedBatch& batch, const std::vector<int64_t>& sequences,
          const SamplingParams& sampling, at::Generator& generator, Schedule& schedule) {
  const auto hidden = model.forward(batch);  // [tokens, hidden]
  std::vector<int64_t> last;
  for (size_t i = 1; i < batch.cu_seqlens.size(); ++i) last.push_back(batch.cu_seqlens[i] - 1);
  const auto rows = hidden.index_select(0, at::tensor(last, at::kLong).to(hidden.device()));
  // Sampling runs on the CPU in float32, so a seed gives the same tokens on any device.
  const auto logits = at::matmul(rows, model.lm_head().t()).to(at::kCPU, at::kFloat);  // [sequences, vocab]
  const auto picked = sample(logits, sampling, generator);
  const auto tokens = picked.tokens.accessor<int64_t, 1>();
  const auto logprobs = picked.logprobs.accessor<float, 1>();
  for (size_t j = 0; j < sequences.size(); ++j) schedule.append(sequences[j], tokens[j], logprobs[j]);
}

}  // namespace

std::vector<SequenceState> generate(const models::CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                    const GenerateOptions& options) {
  at::NoGradGuard no_grad;
  std::vector<int64_t> lengths, all_sequences, flat, cu{0};
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw std::invalid_argument("prompts[" + std::to_string(i) + "]: empty");
    lengths.push_back(static_cast<int64_t>(prompts[i].size()));
    all_sequences.push_back(static_cast<int64_t>(i));
    flat.insert(flat.end(), prompts[i].begin(), prompts[i].end());
    cu.push_back(static_cast<int64_t>(flat.size()));
  }
  Schedule schedule(lengths, options.stop);
  if (prompts.empty() || schedule.running().empty()) return schedule.sequences();
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const auto cache = allocate_kv_cache(model, static_cast<int64_t>(prompts.size()), schedule.cache_length());

  auto prefill = models::pack_batch(at::tensor(flat, at::kLong).to(model.device()), cu);
  prefill.cache = &cache;
  prefill.spans = {all_sequences, std::vector<int64_t>(prompts.size(), 0)};
  step(model, prefill, all_sequences, options.sampling, generator, schedule);

  for (auto running = schedule.running(); !running.empty(); running = schedule.running()) {
    std::vector<int64_t> tokens, offsets, decode_cu{0};
    for (auto i : running) {
      tokens.push_back(schedule.sequences()[i].tokens.back());
      offsets.push_back(schedule.next_offset(i));
      decode_cu.push_back(static_cast<int64_t>(tokens.size()));
    }
    auto decode = models::pack_batch(at::tensor(tokens, at::kLong).to(model.device()), decode_cu, offsets);
    decode.cache = &cache;
    decode.spans = {running, offsets};
    step(model, decode, running, options.sampling, generator, schedule);
  }
  return schedule.sequences();
}

}  // namespace tiller::rollout
