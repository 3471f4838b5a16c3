// Each CUDA kernel against its ATen reference on the same GPU (DESIGN.md §4: every kernel has a
// reference beside it). The CPU build runs the reference on both sides, so this lives in tests/gpu.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  checkLogprobRows as check,
  checkDecode,
  checkDecodeNorm,
  checkFused,
  checkFusedLinear,
  checkMoeCombine,
  checkSample,
} from "../helpers/kernel-check.js";

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

for (const [dtype, rows] of [
  ["bfloat16", 256],
  ["bfloat16", 3],
  ["float16", 64],
] as const) {
  test(`decode norm kernels: the residual add equals ATen's bit for bit, the norms and q/k norm + rope within one rounding of the training forward's; the KV write from strided q/k/v views equals index_copy_: ${dtype}, ${rows} rows`, () => {
    const r = checkDecodeNorm("cuda:0", dtype, rows, 9);
    console.log(`decode norm ${dtype} rows=${rows}: ${JSON.stringify(r)}`);
    assert.equal(r.available, true);
    assert.equal(r.addSum, 0);
    assert.equal(r.stridedKvWriteMismatches, 0);
    // One rounding here against two or three in the ATen expressions: a couple of units.
    const unit = dtype === "float16" ? 2e-3 : 1.6e-2;
    for (const part of [r.norm, r.qkNormRope, r.rope])
      assert.ok(part.diff <= 2 * unit * part.scale, JSON.stringify(part));
  });
}

for (const dtype of ["bfloat16", "float32"] as const) {
  test(`packed q/k/v and gate/up (one GEMM each) equal separate GEMMs within the dtype's rounding, gradients too: ${dtype}`, () => {
    const r = checkFusedLinear("cuda:0", dtype, 515, 3);
    console.log(`fused linear ${dtype}: ${JSON.stringify(r)}`);
    assert.equal(r.adjacent, true);
    assert.equal(r.clonesAdjacent, false);
    // cuBLAS may pick another kernel (and summation order) for the wider GEMM.
    const unit = dtype === "float32" ? 1e-3 : 1.6e-2;
    for (const part of [r.qkv, r.swiglu]) {
      assert.ok(part.outDiff <= unit * part.outScale, JSON.stringify(part));
      assert.ok(part.gradDiff <= unit * part.gradScale, JSON.stringify(part));
    }
  });
}

for (const [dtype, tokens, hidden, experts, topK] of [
  ["bfloat16", 4096, 2048, 128, 8], // the MoE bench's layer: Qwen3-MoE's routing
  ["bfloat16", 333, 100, 8, 2], // Mixtral's top-2, a width that is not a 16-byte multiple
  ["float32", 64, 64, 16, 4],
] as const) {
  test(`MoE dispatch/combine gather kernels within the dtype's rounding of fp64 and deterministic run to run: ${dtype}, ${tokens} tokens, hidden ${hidden}, ${experts} experts top-${topK}`, () => {
    const r = checkMoeCombine("cuda:0", dtype, tokens, hidden, experts, topK, 11);
    console.log(`moe combine ${dtype} T=${tokens}: ${JSON.stringify(r)}`);
    assert.equal(r.available, true);
    assert.equal(r.repeatMismatches, 0);
    // The expert matmul rounds in the dtype; the gathers add no rounding beyond one per output.
    const unit = dtype === "float32" ? 1e-5 : 3e-2;
    assert.ok(r.out <= unit * r.outScale, JSON.stringify(r));
    assert.ok(r.gradX <= unit * r.gradXScale, JSON.stringify(r));
    assert.ok(r.gradWeights <= unit * r.gradWeightsScale, JSON.stringify(r));
  });
}

for (const [dtype, rows, heads, kvHeads, dim, maxLen, window] of [
  ["bfloat16", 64, 16, 8, 128, 384, 0], // Qwen3-0.6B's heads, the generate bench's lengths
  ["bfloat16", 5, 32, 4, 128, 2500, 0], // Qwen3-30B-A3B's groups of 8, several key splits
  ["float16", 7, 14, 2, 64, 77, 0], // Qwen2.5-0.5B's heads (groups of 7)
  ["bfloat16", 9, 8, 8, 128, 1100, 300], // no GQA, a sliding window
] as const) {
  test(`decode attention kernel within bf16 rounding of fp64 as flash is, KV write equals index_copy_: ${dtype}, ${rows} rows, ${heads}/${kvHeads} heads, D ${dim}, ${maxLen} keys, window ${window}`, () => {
    const r = checkDecode("cuda:0", dtype, rows, heads, kvHeads, dim, maxLen, window, 11);
    console.log(
      `decode ${dtype} rows=${rows} H=${heads}/${kvHeads} D=${dim} L=${maxLen} w=${window}: ${JSON.stringify(r)}`,
    );
    assert.equal(r.available, true);
    // Both round the output to the dtype once: within two of its units of the fp64 values.
    const unit = (dtype === "float16" ? 2 ** -10 : 2 ** -7) * Math.max(r.scale, 1);
    assert.ok(r.kernel <= 2 * unit, JSON.stringify(r));
    assert.ok(r.kernel <= Math.max(2 * r.flash, unit), `kernel ${r.kernel} vs flash ${r.flash}`);
    assert.equal(r.kvWritten, true);
    assert.equal(r.kvWriteMismatches, 0);
  });
}

for (const [vocab, temperature] of [
  [151936, 1],
  [32000, 0.7],
  [7, 1.3],
] as const) {
  test(`sampling kernel draws the fp64 inverse CDF's tokens, never one of zero mass: vocab ${vocab}, temperature ${temperature}`, () => {
    const rows = 256;
    const r = checkSample("cuda:0", rows, vocab, temperature, 5);
    console.log(`sample V=${vocab} T=${temperature}: ${JSON.stringify(r)}`);
    assert.equal(r.available, true);
    // fp32 exponentials against fp64 ones: a draw within ~1e-7 of a token boundary may land on
    // its neighbour; across 256 rows that happens about never.
    assert.ok(r.mismatches <= 1, JSON.stringify(r));
    assert.equal(r.zeroMassPicks, 0);
    assert.equal(r.lastPicks, rows / 8, "draws just under 1 take the last token with mass");
  });
}
