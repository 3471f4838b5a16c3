#include "layers/moe.h"

#include <torch/csrc/autograd/custom_function.h>

#include "kernels/gather.h"
#include "layers/mlp.h"
#include "parallel/collectives.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

namespace tiller::layers {
namespace {

bool use_grouped_gemm(const at::Tensor& rows) {
  if (const char* mode = std::getenv("TILLER_MOE_EXPERTS")) {
    const std::string m(mode);
    if (m == "grouped") return true;
    if (m == "loop") return false;
    if (!m.empty()) throw std::invalid_argument("TILLER_MOE_EXPERTS: '" + m + "' is not one of grouped, loop");
  }
  return rows.is_cuda() && rows.scalar_type() == at::kBFloat16;
}

// a: [n, in] grouped by `offsets` ([experts] int32, cumulative row ends), w: [experts, out, in] -> [n, out]
at::Tensor grouped_linear(const at::Tensor& a, const at::Tensor& w, const at::Tensor& offsets) {
  auto y = at::_grouped_mm(a, w.transpose(1, 2), offsets);
  // _grouped_mm's backward refuses non-contiguous gradients (an expanded one from a sum, say).
  if (y.requires_grad()) y.register_hook([](const at::Tensor& grad) { return grad.contiguous(); });
  return y;
}

// h: [n, 2 * inter], gate columns then up columns -> [n, inter]
at::Tensor gated(const at::Tensor& h) { return silu_mul_halves(h); }

at::Tensor select_softmax(const at::Tensor& probs, int64_t top_k) {
  return std::get<1>(at::topk(probs, top_k, -1));
}

// scores: [tokens, experts] sigmoid scores -> [tokens, top_k] chosen from the best groups, by
// scores + bias.
at::Tensor select_grouped(const at::Tensor& scores, const at::Tensor& bias, const MoeConfig& c) {
  const auto tokens = scores.size(0), per_group = c.experts / c.groups;
  auto choice = bias.defined() ? scores + bias : scores;
  const auto group_scores = std::get<0>(choice.view({tokens, c.groups, per_group}).topk(2, -1)).sum(-1);
  const auto best_groups = std::get<1>(at::topk(group_scores, c.top_groups, -1, /*largest=*/true, /*sorted=*/false));
  const auto allowed = at::zeros_like(group_scores, at::kBool).scatter_(1, best_groups, true);  // [tokens, groups]
  const auto allowed_experts = allowed.unsqueeze(-1).expand({tokens, c.groups, per_group}).reshape({tokens, c.experts});
  choice = choice.masked_fill(allowed_experts.logical_not(), -std::numeric_limits<float>::infinity());
  return std::get<1>(at::topk(choice, c.top_k, -1, /*largest=*/true, /*sorted=*/false));
}

}  // namespace

void check_moe_config(const MoeConfig& c) {
  const auto fail = [](const std::string& message) { throw std::invalid_argument("config.json: " + message); };
  if (c.experts <= 0) fail("the number of experts must be > 0");
  if (c.top_k <= 0 || c.top_k > c.experts) {
    fail("num_experts_per_tok (" + std::to_string(c.top_k) + ") must be in 1.." + std::to_string(c.experts));
  }
  if (c.intermediate <= 0) fail("the experts' intermediate size must be > 0");
  if (c.router == RouterKind::SigmoidGrouped) {
    if (c.groups <= 0 || c.experts % c.groups != 0 || c.experts / c.groups < 2) {
      fail("n_group (" + std::to_string(c.groups) + ") must divide n_routed_experts (" + std::to_string(c.experts) +
           ") into groups of at least 2");
    }
    if (c.top_groups <= 0 || c.top_groups > c.groups) {
      fail("topk_group (" + std::to_string(c.top_groups) + ") must be in 1..n_group (" + std::to_string(c.groups) + ")");
    }
    if (c.top_k > c.top_groups * (c.experts / c.groups)) {
      fail("num_experts_per_tok (" + std::to_string(c.top_k) + ") exceeds the experts of topk_group groups");
    }
  }
}

RouterChoice route(const at::Tensor& x, const MoeWeights& w, const MoeConfig& c, const at::Tensor& replay) {
  RouterChoice out;
  at::Tensor source;  // [tokens, experts] float32: where the weights are read
  if (c.router == RouterKind::Softmax) {
    // Logits in the model dtype, softmax in float32, as HF.
    out.probs = at::softmax(at::matmul(x, w.router.t()).to(at::kFloat), -1);
    out.experts = select_softmax(out.probs.detach(), c.top_k);
    source = out.probs;
  } else {
    // DeepSeek-V3 routes in float32 whatever the model dtype.
    const auto scores = at::sigmoid(at::matmul(x.to(at::kFloat), w.router.to(at::kFloat).t()));
    out.experts = select_grouped(scores.detach(), w.score_bias, c);
    out.probs = scores.detach() / scores.detach().sum(-1, /*keepdim=*/true);
    source = scores;
  }
  if (replay.defined()) {
    const auto replayed = replay.select(1, 0).ge(0).unsqueeze(1);  // [tokens, 1]: rows that replay
    out.experts = at::where(replayed, replay, out.experts);
  }
  auto weights = source.gather(1, out.experts);
  if (c.normalize) {
    // DeepSeek-V3 guards the division; the softmax families do not (their sum is never 0).
    const auto sum = weights.sum(-1, /*keepdim=*/true);
    weights = weights / (c.router == RouterKind::SigmoidGrouped ? sum + 1e-20 : sum);
  }
  out.weights = c.router == RouterKind::SigmoidGrouped ? weights * c.scaling : weights;
  return out;
}

at::Tensor run_experts(const at::Tensor& rows, const at::Tensor& ends, const MoeWeights& w) {
  if (use_grouped_gemm(rows)) {
    const auto offsets = ends.to(at::kInt);
    return grouped_linear(gated(grouped_linear(rows, w.gate_up, offsets)), w.down, offsets);
  }
  const auto host = ends.to(at::kCPU);
  const auto end = host.accessor<int64_t, 1>();
  std::vector<at::Tensor> outs;
  for (int64_t e = 0, start = 0; e < host.size(0); start = end[e++]) {
    if (end[e] == start) continue;
    const auto r = rows.slice(0, start, end[e]);  // [rows of expert e, hidden]
    outs.push_back(at::matmul(gated(at::matmul(r, w.gate_up[e].t())), w.down[e].t()));
  }
  return outs.empty() ? at::zeros({0, w.down.size(1)}, rows.options()) : at::cat(outs);
}

namespace {

// The permutation that undoes `order` (a permutation of 0..n-1): inverse[order[i]] = i.
at::Tensor inverse_permutation(const at::Tensor& order) {
  return at::empty_like(order).scatter_(0, order, at::arange(order.numel(), order.options()));
}

// The experts' outputs for `rows` (sorted by global expert; `counts` [experts] int64 rows per
// expert) when the experts live on the ranks of ep->group: rows go to their expert's rank, each
// rank groups what it received by its local expert, runs them, and sends the outputs back in the
// order they came. -> [rows, hidden], in `rows`' order.
at::Tensor dispatch_experts(const at::Tensor& rows, const at::Tensor& counts, const ExpertRows& run,
                            const ExpertParallel& ep) {
  auto& group = *ep.group;
  const int size = group.world_size();
  const auto local = ep.local;
  // Every rank learns how many rows each source sends to each of its local experts.
  auto sent = counts.to(group.device(), at::kLong).contiguous();  // [size * local], global expert order
  auto received = at::empty_like(sent);                           // [size * local]: source-major
  group.all_to_all(received, sent, std::vector<int64_t>(size, local), std::vector<int64_t>(size, local));
  const auto sent_host = sent.to(at::kCPU), received_host = received.to(at::kCPU);
  const auto* s = sent_host.data_ptr<int64_t>();
  const auto* r = received_host.data_ptr<int64_t>();
  std::vector<int64_t> in_splits(size, 0), out_splits(size, 0);
  for (int q = 0; q < size; ++q) {
    for (int64_t e = 0; e < local; ++e) {
      in_splits[q] += s[q * local + e];
      out_splits[q] += r[q * local + e];
    }
  }
  const auto arrived = parallel::all_to_all(rows, in_splits, out_splits, group);  // source-major
  // Group the arrivals by local expert (each expert's rows in source order), run, and undo.
  std::vector<int64_t> starts(size * local), order, ends;
  for (int64_t i = 0, at_row = 0; i < size * local; ++i) {
    starts[i] = at_row;
    at_row += r[i];
  }
  for (int64_t e = 0; e < local; ++e) {
    for (int q = 0; q < size; ++q) {
      for (int64_t k = 0; k < r[q * local + e]; ++k) order.push_back(starts[q * local + e] + k);
    }
    ends.push_back(static_cast<int64_t>(order.size()));
  }
  const auto device = rows.device();
  const auto by_expert = at::tensor(order, at::kLong).to(device);
  const auto y = run(arrived.index_select(0, by_expert), at::tensor(ends, at::kLong).to(device));
  return parallel::all_to_all(y.index_select(0, inverse_permutation(by_expert)), out_splits, in_splits, group);
}

}  // namespace

namespace {

struct LocalMoe {
  at::Tensor out;  // [rows, hidden]
  RouterChoice choice;
};

// The layer over the rows of x that this rank routes (the experts possibly on other ranks).
LocalMoe moe_rows(const at::Tensor& x, const MoeWeights& w, const MoeConfig& c, const at::Tensor& replay,
                  const ExpertParallel* ep) {
  auto choice = route(x, w, c, replay);
  auto out = dispatch_combine(x, choice.experts, choice.weights, c.experts, ep,
                              [&w](const at::Tensor& rows, const at::Tensor& ends) { return run_experts(rows, ends, w); });
  return {std::move(out), std::move(choice)};
}

// The dispatch's gather of token rows into expert order (token_of_row [pairs]); its backward adds
// each token's top_k row gradients (inverse [tokens, top_k]: the pair's row) in fp32, in order,
// where index_select's backward is an index_add_ of bf16 rows with atomics.
struct DispatchRows : torch::autograd::Function<DispatchRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& token_of_row,
                            const at::Tensor& inverse) {
    ctx->save_for_backward({inverse});
    return x.index_select(0, token_of_row);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto inverse = ctx->get_saved_variables()[0];
    return {kernels::gather_sum(grads[0].contiguous(), inverse, at::Tensor()), at::Tensor(), at::Tensor()};
  }
};

// The combine: out[t] = Σ_k weights[t, k] · y[inverse[t, k]] in fp32, rounded once, without the
// fp32 [tokens, top_k, hidden] copy. Backward: d y[r] = weight of r · d out[token of r] (one row
// gather) and d weights[t, k] = d out[t] · y[inverse[t, k]] (fp32 dots).
struct CombineRows : torch::autograd::Function<CombineRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& y, const at::Tensor& weights,
                            const at::Tensor& inverse, const at::Tensor& token_of_row, const at::Tensor& order) {
    ctx->save_for_backward({y, weights, inverse, token_of_row, order});
    return kernels::gather_sum(y, inverse, weights);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &y = saved[0], &weights = saved[1], &inverse = saved[2], &token_of_row = saved[3], &order = saved[4];
    const auto d_out = grads[0].contiguous();
    const auto row_weight = weights.reshape(-1).index_select(0, order).unsqueeze(1);  // [pairs, 1]
    const auto d_y = kernels::gather_sum(d_out, token_of_row.unsqueeze(1), row_weight);
    const auto d_weights = ctx->needs_input_grad(1) ? kernels::gather_dot(d_out, y, inverse).to(weights.scalar_type()) : at::Tensor();
    return {d_y, d_weights, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// rows of x, then `extra` rows of `fill` (differentiable in x).
at::Tensor pad_rows(const at::Tensor& x, int64_t extra, double fill = 0) {
  if (extra == 0) return x;
  auto sizes = x.sizes().vec();
  sizes[0] = extra;
  return at::cat({x, at::full(sizes, fill, x.options())});
}

}  // namespace

at::Tensor dispatch_combine(const at::Tensor& x, const at::Tensor& experts, const at::Tensor& weights,
                            int64_t num_experts, const ExpertParallel* ep, const ExpertRows& run) {
  const auto tokens = x.size(0), top_k = experts.size(1);
  // Sort the (token, expert) pairs by expert; stable, so an expert's rows keep token order.
  // Searching the sorted ids gives each expert's end row without atomics or a host sync.
  const auto flat = experts.reshape(-1);  // [tokens * top_k]
  const auto [sorted, order] = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto ends = at::searchsorted(sorted, at::arange(1, num_experts + 1, flat.options()));  // [experts]
  const auto token_of_row = at::floor_divide(order, top_k);
  const auto inverse = inverse_permutation(order).view({tokens, top_k});  // each pair's sorted row
  const bool gather = kernels::gather_available(x);
  const auto rows = gather ? DispatchRows::apply(x, token_of_row, inverse) : x.index_select(0, token_of_row);
  const bool parallel = ep && ep->group && ep->group->world_size() > 1;
  const auto y = parallel ? dispatch_experts(rows, at::diff(ends, 1, 0, at::zeros({1}, ends.options())), run, *ep)
                          : run(rows, ends);
  // Back to (token, k) order and a weighted sum over k in float32, rounded once: no atomic adds,
  // so each token's output is deterministic and does not depend on the rest of the batch.
  if (gather) return CombineRows::apply(y.contiguous(), weights, inverse, token_of_row, order);
  const auto per_pair = y.index_select(0, inverse.reshape(-1)).view({tokens, top_k, x.size(1)});
  return (per_pair.to(at::kFloat) * weights.unsqueeze(-1)).sum(1).to(x.scalar_type());
}

at::Tensor moe_forward(const at::Tensor& x, const MoeWeights& w, const MoeConfig& c, Routing* routing, int64_t index,
                       const ExpertParallel* ep, const MoeTokens& placement) {
  at::Tensor replay;  // [batch tokens, top_k]
  if (routing && routing->replay.defined()) replay = routing->replay.select(1, index);
  auto* tp = ep && ep->tensor && ep->tensor->world_size() > 1 ? ep->tensor : nullptr;

  // This rank's share of the batch: rows [begin, begin + length) of `total`, in chunks of `chunk`
  // per tensor rank (the last shares may be short or empty).
  const int size = tp ? tp->world_size() : 1, rank = tp ? tp->rank() : 0;
  const bool split = tp && !placement.sharded;
  const int64_t total = placement.sharded ? x.size(0) * size : x.size(0);
  const int64_t chunk = placement.sharded ? x.size(0) : (total + size - 1) / size;
  const int64_t begin = std::min<int64_t>(rank * chunk, total), length = std::min<int64_t>(chunk, total - begin);
  const int64_t valid = placement.valid < 0 ? total : placement.valid;
  at::Tensor local = x;
  if (split && total > 0) local = parallel::scatter_first_dim(pad_rows(x, chunk * size - total), *tp).narrow(0, 0, length);
  at::Tensor local_replay = replay;
  if (tp && replay.defined()) {
    // Replay rows exist for the batch's tokens only; padding rows route normally (-1).
    const auto have = std::clamp<int64_t>(replay.size(0) - begin, 0, length);
    local_replay = pad_rows(replay.narrow(0, std::min<int64_t>(begin, replay.size(0)), have), length - have, -1);
  }
  const auto r = moe_rows(local, w, c, local_replay, ep);

  if (routing) {
    const auto slot = static_cast<size_t>(index);
    // The rows of this share that are tokens of the batch.
    const auto real = std::clamp<int64_t>(valid - begin, 0, length);
    if (routing->record) {
      if (routing->chosen.size() <= slot) routing->chosen.resize(slot + 1);
      routing->chosen[slot] =
          tp ? parallel::all_gather_first_dim(pad_rows(r.choice.experts, chunk - length, -1), *tp).narrow(0, 0, valid)
             : r.choice.experts;
    }
    if (routing->stats) {
      at::NoGradGuard no_grad;
      if (routing->tokens_per_expert.size() <= slot) {
        routing->tokens_per_expert.resize(slot + 1);
        routing->entropy_sum.resize(slot + 1);
      }
      // A scatter-add of ones, not bincount: bincount reads its input's maximum on the host (a
      // device sync on every forward that collects statistics).
      const auto chosen = r.choice.experts.narrow(0, 0, real).reshape(-1);
      auto counts = at::zeros({c.experts}, chosen.options()).scatter_add_(0, chosen, at::ones_like(chosen));
      const auto p = r.choice.probs.detach().narrow(0, 0, real);
      auto entropy = -at::xlogy(p, p).sum();
      if (tp) {
        // Every tensor rank reports the whole batch's statistics, as one device does.
        entropy = entropy.contiguous();
        tp->all_reduce(counts, parallel::ReduceOp::kSum);
        tp->all_reduce(entropy, parallel::ReduceOp::kSum);
      }
      routing->tokens_per_expert[slot] = counts;
      routing->entropy_sum[slot] = entropy;
    }
  }
  if (!split || total == 0) return r.out;
  return parallel::gather_first_dim_replicated(pad_rows(r.out, chunk - length), *tp).narrow(0, 0, total);
}

}  // namespace tiller::layers
