#include "rollout/cuda_decoder.h"

#include <algorithm>
#include <stdexcept>

#ifdef TILLER_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "rollout/kv_cache.h"

namespace tiller::rollout {

bool cuda_decoder_supported(const models::CausalLM& model) {
#ifdef TILLER_CUDA
  const auto dtype = model.dtype();
  // Tensor-parallel decode steps would capture collectives in the graphs: not yet.
  return model.device().is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && model.fixed_rope() &&
         !model.kv_shape().latent && model.tensor_parallel().size() == 1 && !model.pipelined();
#else
  (void)model;
  return false;
#endif
}

#ifdef TILLER_CUDA

struct CudaDecoder::Graph {
  at::cuda::CUDAGraph graph;
  at::Tensor logits;  // [rows, vocab] fp32, written by every replay
};

namespace {

std::vector<int64_t> batch_ladder(int64_t slots) {
  std::vector<int64_t> ladder;
  for (int64_t b : {1, 2, 4, 8}) ladder.push_back(std::min(b, slots));
  for (int64_t b = 16; b < slots; b += 16) ladder.push_back(b);
  ladder.push_back(slots);
  std::sort(ladder.begin(), ladder.end());
  ladder.erase(std::unique(ladder.begin(), ladder.end()), ladder.end());
  return ladder;
}

}  // namespace

CudaDecoder::CudaDecoder(const models::CausalLM& model, int64_t slots, int64_t max_len)
    : model_(model), slots_(slots), max_len_(max_len) {
  if (!cuda_decoder_supported(model)) throw std::invalid_argument("CudaDecoder: model is not CUDA bf16/fp16 with fixed rope");
  const auto device = model.device();
  c10::cuda::CUDAGuard device_guard(device);
  cache_ = allocate_kv_cache(model, slots + 1, max_len);
  meta_ = at::zeros({5, slots + 1}, at::TensorOptions().dtype(at::kLong).device(device));
  meta_host_ = at::zeros({5, slots + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  cu_q_ = at::arange(slots + 1, at::TensorOptions().dtype(at::kInt).device(device));
  ladder_ = batch_ladder(slots);
  // Largest first: later (smaller) graphs reuse the first graph's memory pool.
  at::cuda::MempoolId_t pool{0, 0};
  for (auto it = ladder_.rbegin(); it != ladder_.rend(); ++it) {
    const auto rows = *it;
    // Padding rows of a warm-up point at the scratch slot, position 0.
    auto meta = meta_host_.narrow(1, 0, rows + 1);
    meta.select(0, 0).fill_(0);
    meta.select(0, 1).fill_(0);
    meta.select(0, 2).fill_(slots_ * max_len_);
    meta.select(0, 3).fill_(slots_ * max_len_);
    meta.select(0, 4).fill_(1);
    meta_.copy_(meta_host_);
    auto graph = std::make_unique<Graph>();
    {
      // Capture runs on a side stream; a warm-up first lets cuBLAS and flash pick their kernels.
      c10::cuda::CUDAStreamGuard guard(at::cuda::getStreamFromPool(false, device.index()));
      run_decode(rows);
      at::cuda::getCurrentCUDAStream().synchronize();
      graph->graph.capture_begin(pool);
      graph->logits = run_decode(rows);
      graph->graph.capture_end();
      at::cuda::getCurrentCUDAStream().synchronize();
    }
    if (pool.first == 0 && pool.second == 0) pool = graph->graph.pool();
    graphs_[rows] = std::move(graph);
  }
}

CudaDecoder::~CudaDecoder() = default;

at::Tensor CudaDecoder::run_decode(int64_t rows) {
  at::NoGradGuard no_grad;
  layers::SlotCacheIndex index;
  index.decode = true;
  index.write_rows = meta_.select(0, 2).narrow(0, 0, rows);
  index.cu_q = cu_q_.narrow(0, 0, rows + 1);
  index.key_starts = meta_.select(0, 3).narrow(0, 0, rows + 1).to(at::kInt);
  index.keys_used = meta_.select(0, 4).narrow(0, 0, rows).to(at::kInt);
  index.max_len = max_len_;
  models::PackedBatch batch;
  batch.tokens = meta_.select(0, 0).narrow(0, 0, rows);
  batch.positions = meta_.select(0, 1).narrow(0, 0, rows);
  batch.cache = &cache_;
  batch.slot_cache = &index;
  const auto hidden = model_.forward(batch);                          // [rows, hidden]
  return model_.logits(hidden).to(at::kFloat);     // [rows, vocab]
}

CudaDecoder::Graph& CudaDecoder::graph_for(int64_t rows) {
  const auto it = std::lower_bound(ladder_.begin(), ladder_.end(), rows);
  if (it == ladder_.end()) throw std::invalid_argument("CudaDecoder: more rows than slots");
  return *graphs_.at(*it);
}

at::Tensor CudaDecoder::prefill(const std::vector<std::vector<int64_t>>& prompts) {
  at::NoGradGuard no_grad;
  c10::cuda::CUDAGuard device_guard(model_.device());
  if (static_cast<int64_t>(prompts.size()) > slots_) throw std::invalid_argument("CudaDecoder: more prompts than slots");
  const auto device = model_.device();
  std::vector<at::Tensor> logits;
  // Prefill in chunks of whole prompts of about 16k tokens, bounding activation memory.
  constexpr int64_t kChunkTokens = 16384;
  size_t first = 0;
  while (first < prompts.size()) {
    std::vector<int64_t> flat, positions, rows, cu{0};
    size_t last = first;
    while (last < prompts.size() && (last == first || static_cast<int64_t>(flat.size() + prompts[last].size()) <= kChunkTokens)) {
      const auto& p = prompts[last];
      if (static_cast<int64_t>(p.size()) > max_len_) throw std::invalid_argument("CudaDecoder: prompt longer than max_len");
      for (size_t j = 0; j < p.size(); ++j) {
        flat.push_back(p[j]);
        positions.push_back(static_cast<int64_t>(j));
        rows.push_back(static_cast<int64_t>(last) * max_len_ + static_cast<int64_t>(j));
      }
      cu.push_back(static_cast<int64_t>(flat.size()));
      ++last;
    }
    layers::SlotCacheIndex index;
    index.write_rows = at::tensor(rows, at::kLong).to(device);
    models::PackedBatch batch;
    batch.tokens = at::tensor(flat, at::kLong).to(device);
    batch.positions = at::tensor(positions, at::kLong).to(device);
    batch.cu_seqlens = cu;
    for (size_t i = 1; i < cu.size(); ++i) batch.context_lengths.push_back(cu[i] - cu[i - 1]);
    batch.cache = &cache_;
    batch.slot_cache = &index;
    const auto hidden = model_.forward(batch);  // [tokens, hidden]
    std::vector<int64_t> ends;
    for (size_t i = 1; i < cu.size(); ++i) ends.push_back(cu[i] - 1);
    const auto last_rows = hidden.index_select(0, at::tensor(ends, at::kLong).to(device));
    logits.push_back(model_.logits(last_rows).to(at::kFloat));
    first = last;
  }
  return at::cat(logits);
}

at::Tensor CudaDecoder::decode(const std::vector<int64_t>& slots, const std::vector<int64_t>& tokens,
                               const std::vector<int64_t>& positions) {
  c10::cuda::CUDAGuard device_guard(model_.device());
  const auto rows = static_cast<int64_t>(slots.size());
  auto& graph = graph_for(rows);
  const auto padded = graph.logits.size(0);
  auto meta = meta_host_.accessor<int64_t, 2>();
  for (int64_t b = 0; b < padded; ++b) {
    const bool real = b < rows;
    const auto slot = real ? slots[b] : slots_;
    const auto position = real ? positions[b] : 0;
    if (real && (position >= max_len_ || slot < 0 || slot >= slots_)) {
      throw std::invalid_argument("CudaDecoder: slot or position out of range");
    }
    meta[0][b] = real ? tokens[b] : 0;
    meta[1][b] = position;
    meta[2][b] = slot * max_len_ + position;
    meta[3][b] = slot * max_len_;
    meta[4][b] = position + 1;
  }
  meta[3][padded] = slots_ * max_len_;
  // The pinned buffer is rewritten next step only after this step's logits were read back, which
  // synchronizes, so an asynchronous copy is safe.
  meta_.narrow(1, 0, padded + 1).copy_(meta_host_.narrow(1, 0, padded + 1), /*non_blocking=*/true);
  graph.graph.replay();
  return graph.logits.narrow(0, 0, rows);
}

#else

struct CudaDecoder::Graph {};
CudaDecoder::CudaDecoder(const models::CausalLM& model, int64_t, int64_t) : model_(model), slots_(0), max_len_(0) {
  throw std::invalid_argument("CudaDecoder: this build has no CUDA");
}
CudaDecoder::~CudaDecoder() = default;
at::Tensor CudaDecoder::prefill(const std::vector<std::vector<int64_t>>&) { return {}; }
at::Tensor CudaDecoder::decode(const std::vector<int64_t>&, const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return {};
}

#endif

}  // namespace tiller::rollout
