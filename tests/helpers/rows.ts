// Metrics rows of a multi-rank run against one rank's: the keys the runtime tests compare and the
// check they share (within 1e-5, relative above 1); and a rollouts table's response tokens.
import assert from "node:assert/strict";
import type { Table } from "apache-arrow";
import type { MetricsRow } from "../../src/index.js";

export const comparedMetrics = [
  "actor/pg_loss",
  "actor/grad_norm",
  "actor/entropy",
  "critic/score/mean",
  "actor/pg_clipfrac",
];

export function assertRowsClose(got: MetricsRow, want: MetricsRow, what: string): void {
  for (const key of comparedMetrics) {
    const a = got[key];
    const b = want[key];
    assert.equal(typeof a, "number", `${what}: ${key} missing`);
    assert.ok(
      Math.abs((a as number) - (b as number)) <= 1e-5 * Math.max(1, Math.abs(b as number)),
      `${what}: ${key} ${a} vs one rank ${b}`,
    );
  }
}

/** The response token ids of a rollouts table (experiment.rollouts(step)), one array per row. */
export function responses(rollouts: Table): number[][] | undefined {
  return rollouts
    .getChild("response")
    ?.toArray()
    .map((r: Int32Array) => Array.from(r));
}
