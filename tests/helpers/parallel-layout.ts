// Runs the parallel scenario (parallel-scenario.ts) on every rank of a layout as worker processes
// (parallel-rank.ts) and compares its result with the single-device run: shared by the tensor/data
// parallel and the expert-parallel tests.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Layout, Model } from "../../src/index.js";
import type { ParallelRankConfig } from "./parallel-rank.js";
import type { ScenarioResult } from "./parallel-scenario.js";
import { maxAbsDiff, relativeDiff } from "./parity.js";
import { freePort, type RankResult, runRanks } from "./ranks.js";

export const TOLERANCE = 1e-5;

/**
 * The scenario on `world` ranks of `layout`, the model in `dir`/model; rank 0's result, with
 * pg_loss summed over the data ranks' shares (the mini-batch's metric), and every rank's line.
 */
export async function runLayout(
  dir: string,
  vocab: number,
  layout: Layout,
  world: number,
  tag: string,
  extra: Partial<Pick<ParallelRankConfig, "saveDir" | "scenario" | "unevenGenerate" | "recompute">> = {},
): Promise<{ result: ScenarioResult; ranks: RankResult[] }> {
  const port = await freePort();
  const out = join(dir, `${tag}.json`);
  const configs: ParallelRankConfig[] = Array.from({ length: world }, (_, rank) => ({
    port,
    rank,
    worldSize: world,
    timeoutMs: 20_000,
    layout,
    modelDir: join(dir, "model"),
    vocab,
    out,
    ...extra,
  }));
  const ranks = await runRanks(configs, 150_000, {}, "parallel-rank.js");
  for (const r of ranks) assert.equal(r.ok, true, `rank ${r.rank}: ${r.error}`);
  const result = JSON.parse(readFileSync(out, "utf8")) as ScenarioResult;
  result.pgLoss = result.pgLoss.map((_, i) =>
    ranks.reduce((sum, r) => sum + ((r.pgLoss as number[])[i] ?? 0), 0),
  );
  return { result, ranks };
}

/** Logprobs, entropy, gradients, grad norms, pg_loss, parameters and generations within TOLERANCE. */
export function compareScenario(got: ScenarioResult, ref: ScenarioResult, what: string): void {
  assert.ok(
    maxAbsDiff(got.logprobs, ref.logprobs) <= TOLERANCE,
    `${what}: logprobs ${maxAbsDiff(got.logprobs, ref.logprobs)}`,
  );
  assert.ok(
    maxAbsDiff(got.entropy, ref.entropy) <= TOLERANCE,
    `${what}: entropy ${maxAbsDiff(got.entropy, ref.entropy)}`,
  );
  assert.deepEqual(Object.keys(got.gradients).sort(), Object.keys(ref.gradients).sort());
  for (const [name, g] of Object.entries(ref.gradients)) {
    const d = relativeDiff(got.gradients[name] ?? [], g);
    assert.ok(d <= TOLERANCE, `${what}: gradient of ${name} differs by ${d} (relative)`);
  }
  for (let i = 0; i < ref.gradNorms.length; i++) {
    const d = Math.abs((got.gradNorms[i] ?? 0) - (ref.gradNorms[i] ?? 0)) / (ref.gradNorms[i] ?? 1);
    assert.ok(d <= TOLERANCE, `${what}: grad norm of update ${i} ${got.gradNorms[i]} vs ${ref.gradNorms[i]}`);
    assert.ok(
      Math.abs((got.pgLoss[i] ?? 0) - (ref.pgLoss[i] ?? 0)) <= TOLERANCE,
      `${what}: pg_loss of update ${i}`,
    );
  }
  for (const [name, p] of Object.entries(ref.parameters)) {
    const d = maxAbsDiff(got.parameters[name] ?? [], p);
    assert.ok(d <= TOLERANCE, `${what}: parameter ${name} after 3 updates differs by ${d}`);
  }
  assert.deepEqual(got.generated, ref.generated, `${what}: greedy generation`);
}

/**
 * Each rank of replica d generated prompts[0..d) for 3 + 2d tokens after the scenario (replica 0
 * nothing: it only joined the others' expert dispatches, and the replicas stopped at different
 * steps): each equals the greedy tokens of `single`, the one-device model after the same scenario.
 * `ranks`: the lines of runLayout.
 */
export async function assertLockstepGeneration(
  single: Model,
  prompts: number[][],
  ranks: RankResult[],
): Promise<void> {
  for (const r of ranks) {
    const d = (r.coordinates as { data: number }).data;
    const want = await single.generate(
      prompts.slice(0, d).map((p) => Int32Array.from(p)),
      { maxNewTokens: 3 + 2 * d },
    );
    assert.deepEqual(
      r.generated,
      want.map((g) => Array.from(g.tokens)),
      `rank ${r.rank} (replica ${d})'s generations`,
    );
  }
}
