// The fused rope / SwiGLU entry points on the CPU build: no fused kernel there, so layers/rope
// apply_rope_pair and layers/mlp silu_mul / silu_mul_halves must fall back to the ATen expressions
// exactly (the CUDA kernels are checked against the same expressions in tests/gpu/kernels.test.ts).
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkFused, checkFusedLinear, checkMoeCombine } from "../helpers/kernel-check.js";

test("on CPU the fused rope and silu·mul entry points are the ATen expressions, bit for bit and in their gradients", () => {
  const r = checkFused("cpu", "float32", 33, 5);
  assert.equal(r.available, false);
  for (const [name, part] of Object.entries({
    rope: r.rope,
    siluMul: r.siluMul,
    siluMulHalves: r.siluMulHalves,
  })) {
    assert.ok(part.elements > 0, name);
    assert.equal(part.mismatches, 0, `${name}: ${JSON.stringify(part)}`);
    assert.equal(part.gradDiff, 0, `${name}: ${JSON.stringify(part)}`);
    assert.ok(part.gradScale > 0, name);
  }
});

test("q/k/v and gate/up packed in one storage are recognised and run as one GEMM equal to separate GEMMs within fp32 rounding, gradients too; separate copies are not taken as packed", () => {
  const r = checkFusedLinear("cpu", "float32", 37, 3);
  assert.equal(r.adjacent, true);
  assert.equal(r.clonesAdjacent, false);
  for (const [name, part] of Object.entries({ qkv: r.qkv, swiglu: r.swiglu })) {
    assert.ok(part.outScale > 0 && part.gradScale > 0, name);
    assert.ok(part.outDiff <= 1e-5 * part.outScale, `${name}: ${JSON.stringify(part)}`);
    assert.ok(part.gradDiff <= 1e-5 * part.gradScale, `${name}: ${JSON.stringify(part)}`);
  }
});

test("MoE dispatch/combine on CPU (ATen path) equals the fp64 mixture within fp32 rounding, output and both gradients, run to run identical", () => {
  const r = checkMoeCombine("cpu", "float32", 50, 24, 8, 3, 7);
  assert.equal(r.available, false);
  assert.equal(r.repeatMismatches, 0);
  assert.ok(r.out <= 1e-5 * r.outScale, JSON.stringify(r));
  assert.ok(r.gradX <= 1e-5 * r.gradXScale, JSON.stringify(r));
  assert.ok(r.gradWeights <= 1e-5 * r.gradWeightsScale, JSON.stringify(r));
});
