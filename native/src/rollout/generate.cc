#include "rollout/generate.h"

#include <algorithm>
#include <stdexcept>

#include "parallel/process_group.h"
#include "rollout/cpu_logits.h"
#include "rollout/kv_cache.h"
#include "train/pipeline.h"

namespace tiller::rollout {
namespace {

struct Sampled {
  at::Tensor tokens, logprobs;  // [rows] int64 / float32, host
};

// Samples a row per running sequence from logits [rows, vocab] on the device. The draw of
// sequence i's n-th token hashes (seed, sequence_offset + i, n): batch-invariant.
Sampled sample_rows(const at::Tensor& logits, const std::vector<int64_t>& sequences, const GenerateOptions& options,
                    const Schedule& schedule) {
  auto uniforms = at::empty({static_cast<int64_t>(sequences.size())}, at::kDouble);
  auto* u = uniforms.data_ptr<double>();
  for (size_t j = 0; j < sequences.size(); ++j) {
    const auto i = sequences[j];
    u[j] = sequence_uniform(options.seed, options.sequence_offset + static_cast<uint64_t>(i),
                            schedule.sequences()[i].tokens.size());
  }
  const auto picked = sample(logits, options.sampling, uniforms);
  return {picked.tokens.to(at::kCPU), picked.logprobs.to(at::kCPU, at::kFloat)};
}

void append(const Sampled& sampled, const std::vector<int64_t>& sequences, Schedule& schedule) {
  const auto t = sampled.tokens.accessor<int64_t, 1>();
  const auto lp = sampled.logprobs.accessor<float, 1>();
  for (size_t j = 0; j < sequences.size(); ++j) schedule.append(sequences[j], t[j], lp[j]);
}

#ifdef TILLER_CUDA
void record(const at::Tensor& logits, const std::vector<int64_t>& sequences, const GenerateOptions& options,
            Schedule& schedule) {
  append(sample_rows(logits, sequences, options, schedule), sequences, schedule);
}
#endif

// Per sequence, the experts of every token through the model so far: [tokens, moe_layers, top_k].
using ExpertLog = std::vector<std::vector<int32_t>>;

// Appends the routing `routing` recorded for `batch` to the log of each of its sequences.
void log_experts(const layers::Routing& routing, const models::PackedBatch& batch,
                 const std::vector<int64_t>& sequences, ExpertLog& log) {
  const auto chosen = at::stack(routing.chosen, 1).to(at::kCPU, at::kInt).contiguous();  // [tokens, layers, top_k]
  const auto per_token = chosen.numel() / std::max<int64_t>(chosen.size(0), 1);
  const auto* data = chosen.data_ptr<int32_t>();
  for (size_t j = 0; j < sequences.size(); ++j) {
    auto& out = log[sequences[j]];
    out.insert(out.end(), data + batch.cu_seqlens[j] * per_token, data + batch.cu_seqlens[j + 1] * per_token);
  }
}

// Runs the model on `batch` and samples one token from the last position of each sequence. Under
// pipeline parallelism the batch goes through every stage, the last samples, and every stage
// appends the same tokens.
void step(const models::CausalLM& model, models::PackedBatch& batch, const std::vector<int64_t>& sequences,
          const GenerateOptions& options, Schedule& schedule, ExpertLog* experts) {
  layers::Routing routing;
  routing.record = experts != nullptr;
  if (experts) batch.routing = &routing;
  const auto hidden = train::pipeline_forward(model, batch);  // [tokens, hidden] on the last stage
  if (experts) log_experts(routing, batch, sequences, *experts);
  const auto n = static_cast<int64_t>(sequences.size());
  Sampled sampled{at::empty({n}, at::kLong), at::empty({n}, at::kFloat)};
  if (model.stage().last) {
    std::vector<int64_t> last;
    for (size_t i = 1; i < batch.cu_seqlens.size(); ++i) last.push_back(batch.cu_seqlens[i] - 1);
    const auto rows = hidden.index_select(0, at::tensor(last, at::kLong).to(hidden.device()));
    // Sampling runs where the logits are, in float32, as the CUDA decoder's does: the sampled
    // token's logprob comes from the training forward's own kernel, and only tokens and logprobs
    // cross to the host.
    // On the CPU in fp32 (one rank), the lm-head of these few rows is a stream over its weight:
    // rollout/cpu_logits.h reads it 5× faster than sgemm does for this shape.
    const auto& head = model.lm_head();
    const auto logits = model.tensor_parallel().size() == 1 && cpu_logits_apply(rows, head)
                            ? cpu_logits(rows, head)
                            : model.logits(rows).to(at::kFloat);  // [sequences, vocab]
    sampled = sample_rows(logits, sequences, options, schedule);
  }
  train::from_last_stage(model, {&sampled.tokens, &sampled.logprobs});
  append(sampled, sequences, schedule);
}

#ifdef TILLER_CUDA
std::vector<SequenceState> generate_cuda(const models::CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                         const GenerateOptions& options, std::unique_ptr<CudaDecoder>& decoder,
                                         Schedule& schedule) {
  const auto n = static_cast<int64_t>(prompts.size());
  if (!decoder || !decoder->fits(n, schedule.cache_length())) {
    const auto slots = std::max(n, decoder ? decoder->slots() : 0);
    const auto max_len = std::max(schedule.cache_length(), decoder ? decoder->max_len() : 0);
    decoder.reset();  // free the old cache and graphs before allocating the new ones
    decoder = std::make_unique<CudaDecoder>(model, slots, max_len);
  }
  if (options.kv_cache_bytes) *options.kv_cache_bytes = kv_cache_bytes(decoder->cache());
  std::vector<int64_t> all(prompts.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  record(decoder->prefill(prompts), all, options, schedule);
  for (auto running = schedule.running(); !running.empty(); running = schedule.running()) {
    std::vector<int64_t> tokens, positions;
    for (auto i : running) {
      tokens.push_back(schedule.sequences()[i].tokens.back());
      positions.push_back(schedule.next_offset(i));
    }
    record(decoder->decode(running, tokens, positions), running, options, schedule);
  }
  return schedule.sequences();
}
#endif

}  // namespace

std::vector<SequenceState> generate(const models::CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                    const GenerateOptions& options, std::unique_ptr<CudaDecoder>* decoder) {
  at::NoGradGuard no_grad;
  // Expert parallelism: every forward is collective over the expert group, whose ranks hold other
  // prompts and finish at other steps. They step in lockstep: each step they agree whether anyone
  // still runs, and a rank with nothing of its own joins the MoE dispatch with no tokens.
  auto* experts_group = model.expert_group();
  const auto anyone = [&](bool mine) {
    if (!experts_group) return mine;
    auto flag = at::full({1}, mine ? 1.0f : 0.0f, at::TensorOptions().dtype(at::kFloat).device(experts_group->device()));
    experts_group->all_reduce(flag, parallel::ReduceOp::kMax);
    return flag.item<float>() > 0;
  };
  std::vector<int64_t> lengths, all_sequences, flat, cu{0};
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw std::invalid_argument("prompts[" + std::to_string(i) + "]: empty");
    lengths.push_back(static_cast<int64_t>(prompts[i].size()));
    all_sequences.push_back(static_cast<int64_t>(i));
    flat.insert(flat.end(), prompts[i].begin(), prompts[i].end());
    cu.push_back(static_cast<int64_t>(flat.size()));
  }
  if (options.images && !model.accepts_images()) throw std::invalid_argument("images: this model takes no images");
  Schedule schedule(lengths, options.stop);
  const bool mine = !prompts.empty() && !schedule.running().empty();
  if (!anyone(mine)) return schedule.sequences();
  if (!mine) {
    // Nothing here: join the others' steps until they are done.
    do model.idle_expert_step();
    while (anyone(false));
    return schedule.sequences();
  }
  const auto moe = model.moe_shape();
  const bool record = options.record_experts && moe.layers > 0;
  if (record && model.pipelined()) {
    throw std::invalid_argument("recordExperts: not under pipeline parallelism yet (each stage routes its own layers)");
  }
#ifdef TILLER_CUDA
  if (decoder && cuda_decoder_supported(model) && !record && !experts_group) {
    return generate_cuda(model, prompts, options, *decoder, schedule);
  }
#else
  (void)decoder;
#endif
  const auto cache = allocate_kv_cache(model, static_cast<int64_t>(prompts.size()), schedule.cache_length());
  if (options.kv_cache_bytes) *options.kv_cache_bytes = kv_cache_bytes(cache);

  auto prefill = models::pack_batch(at::tensor(flat, at::kLong).to(model.device()), cu);
  prefill.cache = &cache;
  prefill.spans = {all_sequences, std::vector<int64_t>(prompts.size(), 0)};
  prefill.images = options.images;
  // Rope positions of generated tokens: their cache positions, shifted per sequence (M-RoPE).
  const auto shift = model.position_shift(prefill);
  ExpertLog experts(record ? prompts.size() : 0);
  ExpertLog* log = record ? &experts : nullptr;
  step(model, prefill, all_sequences, options, schedule, log);

  for (auto running = schedule.running(); anyone(!running.empty()); running = schedule.running()) {
    if (running.empty()) {
      model.idle_expert_step();
      continue;
    }
    std::vector<int64_t> tokens, offsets, decode_cu{0};
    for (auto i : running) {
      tokens.push_back(schedule.sequences()[i].tokens.back());
      offsets.push_back(schedule.next_offset(i));
      decode_cu.push_back(static_cast<int64_t>(tokens.size()));
    }
    auto positions = offsets;
    for (size_t j = 0; j < running.size() && !shift.empty(); ++j) positions[j] += shift[running[j]];
    auto decode = models::pack_batch(at::tensor(tokens, at::kLong).to(model.device()), decode_cu, positions);
    decode.cache = &cache;
    decode.spans = {running, offsets};
    step(model, decode, running, options, schedule, log);
  }
  auto results = schedule.sequences();
  for (size_t i = 0; record && i < results.size(); ++i) {
    // The last generated token was sampled but never fed back: no routing of its own.
    if (!results[i].tokens.empty()) experts[i].resize(experts[i].size() + moe.layers * moe.top_k, -1);
    results[i].experts = std::move(experts[i]);
  }
  return results;
}

}  // namespace tiller::rollout
