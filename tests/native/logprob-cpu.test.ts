// The fused CPU logprob/entropy kernels (kernels/logprob.cc) against their ATen reference, and the
// chunked logprob function's kept logits (CPU) against recomputing them chunk by chunk.
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkLogprobRows as check } from "../helpers/kernel-check.js";

// Vocabularies around the kernels' 16-wide lanes and 1,024-value blocks (tails of each), a real
// one, and temperatures on both sides of 1.
for (const [vocab, temperature] of [
  [1, 1],
  [7, 1],
  [15, 0.7],
  [1000, 1],
  [1037, 1.3],
  [151936, 1],
  [151936, 0.6],
] as const) {
  test(`the fused CPU logprob, entropy and gradient match fp64 at least as closely as the ATen reference: vocab ${vocab}, temperature ${temperature}`, () => {
    const r = check("cpu", "float32", 33, vocab, temperature, 5);
    const { kernel, reference } = r.exact;
    const gradUnit = 1e-6 * Math.max(r.gradScale, 1);
    // Against the exact values: fp32 rounding of values of size ~log(V).
    assert.ok(kernel.logprob < 1e-5 && kernel.entropy < 1e-5, JSON.stringify(r));
    assert.ok(kernel.gradLogits <= gradUnit, JSON.stringify(r));
    // No worse than the reference (which sums 152k fp32 terms and is off by ~6e-5 there).
    assert.ok(kernel.logprob <= reference.logprob + 1e-6, JSON.stringify(r));
    assert.ok(kernel.entropy <= reference.entropy + 1e-6, JSON.stringify(r));
    assert.ok(kernel.gradLogits <= reference.gradLogits + gradUnit, JSON.stringify(r));
    // And within the tolerance the CUDA kernel is held to against the same reference.
    assert.ok(r.logprob < 2e-4 && r.lse < 2e-4 && r.entropy < 2e-4, JSON.stringify(r));
    assert.ok(r.gradLogitsNoEntropy <= 1e-6 * Math.max(r.gradScale, 1) * 10, JSON.stringify(r));
  });
}
