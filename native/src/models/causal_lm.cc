#include "models/causal_lm.h"

#include "parallel/collectives.h"

namespace tiller::models {

PackedBatch pack_batch(const at::Tensor& tokens, std::vector<int64_t> cu_seqlens, const std::vector<int64_t>& offsets) {
  PackedBatch batch;
  const auto sequences = cu_seqlens.size() - 1;
  std::vector<int64_t> positions;
  positions.reserve(tokens.size(0));
  for (size_t i = 0; i < sequences; ++i) {
    const int64_t offset = offsets.empty() ? 0 : offsets[i];
    for (int64_t j = 0; j < cu_seqlens[i + 1] - cu_seqlens[i]; ++j) positions.push_back(offset + j);
    batch.context_lengths.push_back(offset + cu_seqlens[i + 1] - cu_seqlens[i]);
  }
  batch.tokens = tokens;
  batch.positions = at::tensor(positions, at::kLong).to(tokens.device());
  batch.cu_seqlens = std::move(cu_seqlens);
  return batch;
}

const NamedTensors& CausalLM::named_buffers() const {
  static const NamedTensors none;
  return none;
}

int64_t CausalLM::stage_rows(const PackedBatch& batch) const {
  const auto tokens = batch.tokens.size(0);
  const bool sp = tp_.sequence_parallel() && !batch.cache && !batch.slot_cache;
  return sp ? (tokens + tp_.size() - 1) / tp_.size() : tokens;
}

void CausalLM::set_recompute(const layers::RecomputePolicy& policy) {
  if (policy.granularity != layers::Recompute::kNone && !supports_recompute()) {
    throw std::invalid_argument("recompute: not for this model family yet (the dense decoders, Qwen3-MoE and Mixtral run it)");
  }
  recompute_ = policy;
}

void CausalLM::check_stage_input(const PackedBatch& batch) const {
  const auto rows = stage_rows(batch);
  const auto& x = batch.stage_input;
  if (!x.defined() || x.dim() != 2 || x.size(0) != rows || x.size(1) != hidden_size()) {
    throw std::invalid_argument("stage_input: pipeline stage " + std::to_string(stage_.begin) + ".." +
                                std::to_string(stage_.end) + " expects [" + std::to_string(rows) + ", " +
                                std::to_string(hidden_size()) + "] from the previous stage" +
                                (x.defined() ? ", got " + c10::str(x.sizes()) : ", got none"));
  }
}

at::Tensor CausalLM::logits(const at::Tensor& rows) const {
  if (!stage_.last) throw std::logic_error("logits: this pipeline stage holds no lm-head");
  const auto local = at::matmul(rows, lm_head().t());  // [n, vocab / tp]
  if (tp_.size() == 1) return local;
  return parallel::all_gather_first_dim(local.t().contiguous(), *tp_.group()).t();
}

NamedTensors CausalLM::checkpoint_tensors() const {
  auto tensors = named_parameters();
  const auto& buffers = named_buffers();
  tensors.insert(tensors.end(), buffers.begin(), buffers.end());
  return tensors;
}

}  // namespace tiller::models
