// Each CUDA kernel against its ATen reference on the same GPU (DESIGN.md §4: every kernel has a
// reference beside it). The CPU build runs the reference on both sides, so this lives in tests/gpu.
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkLogprobRows as check, checkFused } from "../helpers/kernel-check.js";

for (const [dtype, vocab, temperature] of [
  ["float32", 1000, 1],
  ["bfloat16", 151936, 1],
  ["bfloat16", 151936, 0.7],
  ["float16", 32000, 1.3],
  ["bfloat16", 7, 1],
] as const) {
  test(`logprob/entropy kernel vs reference: ${dtype}, vocab ${vocab}, temperature ${temperature}`, () => {
    const r = check("cuda:0", dtype, 64, vocab, temperature, 3);
    console.log(`${dtype} V=${vocab} T=${temperature}: ${JSON.stringify(r)}`);
    // fp32 sums in a different order: agreement to fp32 rounding of values of size ~log(V).
    assert.ok(r.logprob < 2e-4 && r.lse < 2e-4, JSON.stringify(r));
    assert.ok(r.entropy < 2e-4, JSON.stringify(r));
    // Gradients are rounded to the logits' dtype on both sides: within one unit in that dtype.
    const unit = dtype === "float32" ? 1e-6 : dtype === "float16" ? 1e-3 : 8e-3;
    assert.ok(r.gradLogits <= unit * Math.max(r.gradScale, 1), JSON.stringify(r));
    assert.ok(r.gradLogitsNoEntropy <= unit * Math.max(r.gradScale, 1), JSON.stringify(r));
  });
}

for (const [dtype, tokens] of [
  ["bfloat16", 256],
  ["bfloat16", 4099],
  ["float16", 77],
  ["float32", 33],
] as const) {
  test(`fused rope, silu·mul and MoE silu·mul-of-halves forwards equal the ATen expressions bit for bit, gradients within a unit: ${dtype}, ${tokens} tokens`, () => {
    const r = checkFused("cuda:0", dtype, tokens, 5);
    console.log(`fused ${dtype} T=${tokens}: ${JSON.stringify(r)}`);
    assert.equal(r.available, true);
    assert.equal(r.rope.mismatches, 0, `rope: ${r.rope.mismatches} of ${r.rope.elements} differ`);
    assert.equal(
      r.siluMul.mismatches,
      0,
      `silu·mul: ${r.siluMul.mismatches} of ${r.siluMul.elements} differ`,
    );
    assert.equal(r.siluMulHalves.mismatches, 0, `silu·mul of halves: ${r.siluMulHalves.mismatches} differ`);
    // One rounding in the fused backward against several in autograd's: a few units of the dtype.
    const unit = dtype === "float32" ? 1e-6 : dtype === "float16" ? 2e-3 : 1.6e-2;
    for (const part of [r.rope, r.siluMul, r.siluMulHalves])
      assert.ok(part.gradDiff <= unit * Math.max(part.gradScale, 1), JSON.stringify(part));
  });
}
