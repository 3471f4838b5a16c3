// Mixture-of-experts feed-forward: a router picks top_k experts per token, the (token, expert)
// pairs are sorted by expert, every expert runs its SwiGLU MLP over its rows (one grouped GEMM per
// projection on CUDA in bf16, a plain per-expert loop otherwise) and the outputs are summed back
// per token, weighted by the router, in float32 (HF adds the experts one by one in the model's
// dtype: bf16 results may differ in the last bit). Dropless: every token reaches all of its experts. Expert
// weights are stacked [experts, out, in], so that expert parallelism can split them along dim 0.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace tiller::parallel {
class ProcessGroup;
}

namespace tiller::layers {

// Expert parallelism: this rank holds experts [first, first + local) of every MoE layer (the
// stacked weights' rows), the group's ranks the rest in order. Tokens reach their experts by
// Megatron's all-to-all dispatch and come back by its inverse; dropless, counts exchanged first.
//
// Under attention's tensor parallelism (expert tensor parallelism 1, Megatron's folding), the tensor
// ranks hold the same tokens (or, with sequence parallelism, each its shard of them): each routes
// and dispatches only its share, so every token reaches its experts once, and the outputs are
// gathered back where the residual stream is replicated. The router then sees a share of the
// tokens on each tensor rank: its gradient is partial and completed over the tensor group.
struct ExpertParallel {
  parallel::ProcessGroup* group = nullptr;  // null or one rank: every expert is here
  int64_t first = 0;
  int64_t local = 0;
  parallel::ProcessGroup* tensor = nullptr;  // attention's tensor group; null or one rank: none
};

// Where the layer's input rows sit relative to the batch under tensor parallelism.
struct MoeTokens {
  // x is this tensor rank's shard of the batch (sequence parallelism: rows rank·n .. of the padded
  // batch); otherwise x holds every token, the same on each tensor rank.
  bool sharded = false;
  // Rows of the batch that are tokens (sequence-parallel padding follows them; it is routed but
  // neither recorded nor counted); -1: all.
  int64_t valid = -1;
};

enum class RouterKind {
  Softmax,         // Qwen3-MoE, Mixtral: softmax over the experts, top-k of the probabilities
  SigmoidGrouped,  // DeepSeek-V3: sigmoid scores; selection adds a bias and keeps the best groups
};

struct MoeConfig {
  RouterKind router = RouterKind::Softmax;
  int64_t experts = 0;
  int64_t top_k = 0;
  int64_t intermediate = 0;  // of each expert
  bool normalize = false;    // divide the top-k weights by their sum (Mixtral always; norm_topk_prob)
  // SigmoidGrouped: experts form `groups` equal groups scored by the sum of their best two experts'
  // biased scores; only experts of the best `top_groups` groups can be chosen. Weights are the
  // unbiased scores, times `scaling` (routed_scaling_factor).
  int64_t groups = 1;
  int64_t top_groups = 1;
  double scaling = 1.0;
};

// Checks the sizes against each other; errors name the HF config fields.
void check_moe_config(const MoeConfig& config);

struct MoeWeights {
  at::Tensor router;      // [experts, hidden]
  at::Tensor score_bias;  // [experts] float32; SigmoidGrouped only: added to the scores for selection
  at::Tensor gate_up;     // [experts, 2 * intermediate, hidden]: the gate rows, then the up rows
  at::Tensor down;        // [experts, hidden, intermediate]
};

// What one forward does with its routing besides using it, shared by all its MoE layers (`index`
// below is a layer's place among the model's MoE layers, from 0).
struct Routing {
  // Replay: [tokens, moe_layers, top_k] int64 expert ids on the model's device, used instead of the
  // router's choice (the weights still come from the router at those experts, so gradients reach it
  // as usual). A row of -1 routes that token normally.
  at::Tensor replay;
  // Record: chosen[index] = the experts the layer used, [tokens, top_k] int64.
  bool record = false;
  std::vector<at::Tensor> chosen;
  // Stats: tokens_per_expert[index] = [experts] int64 (each token counts once per chosen expert);
  // entropy_sum[index] = scalar float32, the router distribution's entropy in nats summed over tokens
  // (softmax: the probabilities; sigmoid: the scores divided by their sum).
  bool stats = false;
  std::vector<at::Tensor> tokens_per_expert, entropy_sum;
};

struct RouterChoice {
  at::Tensor experts;  // [tokens, top_k] int64
  at::Tensor weights;  // [tokens, top_k] float32, differentiable in the router weight and x
  at::Tensor probs;    // [tokens, experts] float32: the distribution whose entropy stats report
};

// x: [tokens, hidden]; replay: [tokens, top_k] int64 or undefined (see Routing::replay).
RouterChoice route(const at::Tensor& x, const MoeWeights& w, const MoeConfig& c, const at::Tensor& replay);

// x: [tokens, hidden] -> [tokens, hidden]. routing may be null. With `ep` over several ranks, w's
// expert weights are this rank's `ep->local` experts and every rank of the group must call this
// for the same layers in the same order (empty x too): the dispatch is collective.
// Routing records and statistics are the whole batch's on every tensor rank (gathered and summed
// over the tensor group), as on one device; replay rows are read at the batch's token positions.
at::Tensor moe_forward(const at::Tensor& x, const MoeWeights& w, const MoeConfig& c, Routing* routing, int64_t index,
                       const ExpertParallel* ep = nullptr, const MoeTokens& tokens = {});

// What an MoE layer's experts do to rows grouped by (local) expert: (rows, ends) -> outputs, as
// run_experts below with the layer's weights.
using ExpertRows = std::function<at::Tensor(const at::Tensor& rows, const at::Tensor& ends)>;

// The token dispatcher on its own (moe_forward's, and its test, as Megatron's): each (token, k)
// pair of x goes to expert experts[token, k] (num_experts in all; on its expert rank when ep spans
// several ranks: counts exchanged, then the rows by all-to-all), through `run`, comes back by the
// inverse path, and the pairs are summed per token weighted by `weights` ([tokens, top_k] float32)
// in float32, rounded once to x's dtype. With an identity `run` and weights 1/top_k it returns x.
at::Tensor dispatch_combine(const at::Tensor& x, const at::Tensor& experts, const at::Tensor& weights,
                            int64_t num_experts, const ExpertParallel* ep, const ExpertRows& run);

// rows: [n, hidden], (token, expert) pairs sorted by expert; ends: [experts] int64, the cumulative
// row count through each expert -> [n, hidden], each row through its expert's SwiGLU. Grouped GEMM
// when TILLER_MOE_EXPERTS=grouped, or by default on CUDA in bf16; the per-expert loop when
// TILLER_MOE_EXPERTS=loop or otherwise. (The switch lets tests compare the two on any device.)
at::Tensor run_experts(const at::Tensor& rows, const at::Tensor& ends, const MoeWeights& w);

}  // namespace tiller::layers
