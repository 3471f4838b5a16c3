// The MoE token dispatcher on its own, as Megatron tests its own (CPU worker processes over gloo):
// tokens of every rank go to their experts on the other ranks by all-to-all (counts exchanged
// first, dropless: uneven counts, a rank that sends nothing, an expert that receives nothing) and
// come back. With identity experts and equal routing weights the combine returns its input exactly
// and its gradient is the upstream gradient exactly; with experts that scale their rows by 1 + their
// id, every token's output is the weighted sum of its own experts' scales.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { DispatchRankConfig } from "../helpers/dispatch-rank.js";
import { freePort, runRanks } from "../helpers/ranks.js";

for (const world of [2, 4]) {
  test(`dispatch then combine over ${world} ranks returns the input exactly, its gradient is the upstream gradient, and each row reached its own experts`, {
    timeout: 60_000,
  }, async () => {
    const port = await freePort();
    const configs: DispatchRankConfig[] = Array.from({ length: world }, (_, rank) => ({
      port,
      rank,
      worldSize: world,
      experts: 2 * world,
      topK: 2,
      hidden: 6,
    }));
    const ranks = await runRanks(configs, 50_000, {}, "dispatch-rank.js");
    for (const r of ranks) {
      assert.equal(r.ok, true, `rank ${r.rank}: ${r.error}`);
      const x = r.x as number[];
      const plain = r.plain as { output: number[]; grad: number[] };
      const scaled = r.scaled as { output: number[]; grad: number[] };
      assert.deepEqual(plain.output, x, `rank ${r.rank}: combine(dispatch(x)) is x`);
      assert.deepEqual(plain.grad, r.upstream, `rank ${r.rank}: the gradient is the upstream gradient`);
      const ids = r.ids as number[];
      const weights = r.weights as number[];
      const hidden = 6;
      for (let i = 0; i < x.length; i++) {
        const t = Math.floor(i / hidden);
        const factor =
          (weights[2 * t] as number) * ((ids[2 * t] as number) + 1) +
          (weights[2 * t + 1] as number) * ((ids[2 * t + 1] as number) + 1);
        const want = (x[i] as number) * factor;
        assert.ok(
          Math.abs((scaled.output[i] as number) - want) <= 1e-5 * Math.max(1, Math.abs(want)),
          `rank ${r.rank}, token ${t}: ${scaled.output[i]} vs ${want}`,
        );
        const g = ((r.upstream as number[])[i] as number) * factor;
        assert.ok(Math.abs((scaled.grad[i] as number) - g) <= 1e-5 * Math.max(1, Math.abs(g)));
      }
    }
  });
}
