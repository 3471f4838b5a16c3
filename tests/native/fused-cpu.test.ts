// The fused rope / SwiGLU entry points on the CPU build: no fused kernel there, so layers/rope
// apply_rope_pair and layers/mlp silu_mul / silu_mul_halves must fall back to the ATen expressions
// exactly (the CUDA kernels are checked against the same expressions in tests/gpu/kernels.test.ts).
import assert from "node:assert/strict";
import { test } from "node:test";
import { checkFused } from "../helpers/kernel-check.js";

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
