#include "train/pipeline.h"

#include <chrono>
#include <deque>
#include <stdexcept>

#include "parallel/process_group.h"
#include "train/session.h"

namespace tiller::train {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The point-to-point side of a schedule on one stage: its neighbours in the pipeline group (whose
// rank is the stage index) and what the transfers cost.
class StageLink {
 public:
  StageLink(const models::CausalLM& model, ScheduleStats& stats)
      : group_(model.pipeline_group()), stage_(group_ ? group_->rank() : 0), stats_(stats) {}

  bool first() const { return stage_ == 0; }
  bool last() const { return !group_ || stage_ == group_->world_size() - 1; }

  // One exchange with the neighbours: `forward` (this stage's output) to the next stage and
  // `backward` (the gradient of this stage's input) to the previous one, where given; receives
  // into `from_previous` / `from_next` where given. Everything is issued before anything is waited
  // on, as Megatron's send_forward_recv_backward and send_backward_recv_forward.
  void exchange(const at::Tensor& forward, const at::Tensor& backward, at::Tensor* from_previous, at::Tensor* from_next) {
    std::vector<parallel::ProcessGroup::Transfer> sends, receives;
    if (forward.defined() && !last()) sends.push_back({forward.detach().contiguous(), stage_ + 1});
    if (backward.defined() && !first()) sends.push_back({backward.contiguous(), stage_ - 1});
    if (from_previous && !first()) receives.push_back({*from_previous, stage_ - 1});
    if (from_next && !last()) receives.push_back({*from_next, stage_ + 1});
    if (sends.empty() && receives.empty()) return;
    for (const auto& t : sends) stats_.bytes_sent += static_cast<int64_t>(t.tensor.nbytes());
    const auto start = Clock::now();
    group_->exchange(sends, receives);
    stats_.wait_seconds += since(start);
  }

 private:
  parallel::ProcessGroup* group_;
  int stage_;
  ScheduleStats& stats_;
};

// The residual stream of `mb` as it crosses between stages: [rows, hidden] in the model's dtype.
at::Tensor boundary_buffer(const models::CausalLM& model, const MicroBatch& mb) {
  auto batch = models::pack_batch(mb.tokens, mb.cu);
  return at::empty({model.stage_rows(batch), model.hidden_size()},
                   at::TensorOptions().dtype(model.dtype()).device(model.device()));
}

}  // namespace

ScheduleStats train_micro_batches(ModelSession& session, const std::vector<MicroBatch>& micro_batches,
                                  double temperature, int64_t chunk_tokens, const MicroBatchLoss& loss) {
  const auto start = Clock::now();
  const auto& model = *session.model;
  ScheduleStats stats;
  stats.micro_batches = static_cast<int64_t>(micro_batches.size());
  StageLink link(model, stats);
  auto* pipeline = model.pipeline_group();
  stats.stages = pipeline ? pipeline->world_size() : 1;

  // What one micro-batch keeps between its forward and its backward: the stage input (a leaf whose
  // gradient goes back to the previous stage) and the stage output, or the loss on the last stage.
  struct InFlight {
    size_t index;
    at::Tensor input, output;
  };
  const auto forward = [&](size_t i, at::Tensor input) {
    const auto& mb = micro_batches[i];
    // One stage: the whole forward and its logprobs (context parallelism included).
    if (!pipeline) {
      return InFlight{i, at::Tensor(),
                      loss(i, forward_logprobs(session, mb.tokens, mb.cu, temperature, chunk_tokens, mb.replay, mb.images))};
    }
    if (input.defined()) input.requires_grad_(true);
    auto hidden = stage_forward(session, mb, input);
    if (!link.last()) return InFlight{i, input, hidden};
    return InFlight{i, input, loss(i, head_logprobs(session, hidden, mb, temperature, chunk_tokens))};
  };
  // Backward from the next stage's gradient of this stage's output (the loss's own on the last);
  // returns the gradient of this stage's input (undefined on the first stage).
  const auto backward = [&](InFlight& f, const at::Tensor& grad) {
    session.grads_pending = true;  // a backward that fails halfway may have added part of its gradients
    if (link.last()) {
      f.output.backward();
    } else {
      f.output.backward(grad);
    }
    auto dx = f.input.defined() ? f.input.grad() : at::Tensor();
    f = InFlight{f.index, at::Tensor(), at::Tensor()};  // frees the graph's activations
    return dx;
  };
  const auto receive_input = [&](size_t i) {
    if (link.first()) return at::Tensor();
    auto x = boundary_buffer(model, micro_batches[i]);
    link.exchange(at::Tensor(), at::Tensor(), &x, nullptr);
    return x;
  };

  const auto m = micro_batches.size();
  const auto p = static_cast<size_t>(stats.stages), r = static_cast<size_t>(pipeline ? pipeline->rank() : 0);
  const size_t warmup = std::min(p - r - 1, m), steady = m - warmup;
  std::deque<InFlight> in_flight;
  for (size_t i = 0; i < warmup; ++i) {
    in_flight.push_back(forward(i, receive_input(i)));
    link.exchange(in_flight.back().output, at::Tensor(), nullptr, nullptr);
  }
  at::Tensor input = steady > 0 ? receive_input(warmup) : at::Tensor();
  for (size_t j = 0; j < steady; ++j) {
    const size_t i = warmup + j;
    in_flight.push_back(forward(i, input));
    // Send this output, receive the gradient of the oldest micro-batch in flight (micro-batch j).
    auto grad = link.last() ? at::Tensor() : boundary_buffer(model, micro_batches[j]);
    link.exchange(in_flight.back().output, at::Tensor(), nullptr, link.last() ? nullptr : &grad);
    auto oldest = std::move(in_flight.front());
    in_flight.pop_front();
    const auto dx = backward(oldest, grad);
    if (j + 1 == steady) {
      link.exchange(at::Tensor(), dx, nullptr, nullptr);
    } else {
      // Send that input gradient back, receive the next micro-batch's input.
      input = link.first() ? at::Tensor() : boundary_buffer(model, micro_batches[i + 1]);
      link.exchange(at::Tensor(), dx, link.first() ? nullptr : &input, nullptr);
    }
  }
  while (!in_flight.empty()) {
    auto oldest = std::move(in_flight.front());
    in_flight.pop_front();
    auto grad = boundary_buffer(model, micro_batches[oldest.index]);
    link.exchange(at::Tensor(), at::Tensor(), nullptr, &grad);
    link.exchange(at::Tensor(), backward(oldest, grad), nullptr, nullptr);
  }
  stats.seconds = since(start);
  return stats;
}

layers::TokenLogprobs pipeline_logprobs(ModelSession& session, const MicroBatch& mb, double temperature,
                                        int64_t chunk_tokens) {
  const auto& model = *session.model;
  ScheduleStats stats;
  StageLink link(model, stats);
  at::Tensor input;
  if (!link.first()) {
    input = boundary_buffer(model, mb);
    link.exchange(at::Tensor(), at::Tensor(), &input, nullptr);
  }
  const auto hidden = stage_forward(session, mb, input);
  if (!link.last()) {
    link.exchange(hidden, at::Tensor(), nullptr, nullptr);
    const auto none = at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(model.device()));
    return {none, none};
  }
  return head_logprobs(session, hidden, mb, temperature, chunk_tokens);
}

at::Tensor pipeline_forward(const models::CausalLM& model, models::PackedBatch& batch) {
  if (!model.pipelined()) return model.forward(batch);
  auto& group = *model.pipeline_group();
  const int stage = group.rank(), stages = group.world_size();
  if (stage > 0) {
    batch.stage_input = at::empty({model.stage_rows(batch), model.hidden_size()},
                                  at::TensorOptions().dtype(model.dtype()).device(model.device()));
    group.exchange({}, {{batch.stage_input, stage - 1}});
  }
  auto out = model.forward(batch);
  if (stage + 1 == stages) return out;
  group.exchange({{out.contiguous(), stage + 1}}, {});
  return at::Tensor();
}

void from_last_stage(const models::CausalLM& model, std::vector<at::Tensor*> values) {
  auto* group = model.pipeline_group();
  if (!group) return;
  for (auto* v : values) {
    auto on_group = v->to(group->device()).contiguous();
    group->broadcast(on_group, group->world_size() - 1);
    *v = on_group.to(v->device());
  }
}

}  // namespace tiller::train
