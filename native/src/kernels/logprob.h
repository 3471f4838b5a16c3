// Per-row log-probability of a target and entropy of softmax(logits / temperature), and their
// gradient, over [rows, vocab] logits. The one place both training (layers/logprob) and rollout
// sampling (rollout/sampler) compute logprobs, so the two agree bit for bit. On CUDA each is one
// fused pass over the logits in their own dtype (logprob.cu); on CPU the ATen reference here.
#pragma once

#include <ATen/ATen.h>

namespace tiller::kernels {

struct RowStats {
  at::Tensor logprob;  // [rows] fp32: z_target - lse
  at::Tensor entropy;  // [rows] fp32: -sum p log p
  at::Tensor lse;      // [rows] fp32: logsumexp(z), z = logits / temperature in fp32
};

// logits: [rows, vocab], any float dtype; targets: [rows] int64.
RowStats logprob_rows(const at::Tensor& logits, const at::Tensor& targets, double temperature);

// d/dlogits of sum(grad_logprob * logprob + grad_entropy * entropy), in logits' dtype.
// grad_entropy may be undefined (no entropy term). stats: what logprob_rows returned.
at::Tensor logprob_rows_backward(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                 const RowStats& stats, const at::Tensor& grad_logprob,
                                 const at::Tensor& grad_entropy);

// As logprob_rows_backward, written over `logits` itself, whose values it consumes (no new
// [rows, vocab] buffer: on the CPU a fresh one costs a page fault per 4 KiB). Returns `logits`.
at::Tensor logprob_rows_backward_(at::Tensor& logits, const at::Tensor& targets, double temperature,
                                  const RowStats& stats, const at::Tensor& grad_logprob, const at::Tensor& grad_entropy);

// The ATen reference of both (also what CPU tensors use), for testing the CUDA kernels.
RowStats logprob_rows_reference(const at::Tensor& logits, const at::Tensor& targets, double temperature);
at::Tensor logprob_rows_backward_reference(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                           const RowStats& stats, const at::Tensor& grad_logprob,
                                           const at::Tensor& grad_entropy);

#ifdef TILLER_CUDA
RowStats logprob_rows_cuda(const at::Tensor& logits, const at::Tensor& targets, double temperature);
at::Tensor logprob_rows_backward_cuda(const at::Tensor& logits, const at::Tensor& targets, double temperature,
                                      const RowStats& stats, const at::Tensor& grad_logprob,
                                      const at::Tensor& grad_entropy);
#endif

}  // namespace tiller::kernels
