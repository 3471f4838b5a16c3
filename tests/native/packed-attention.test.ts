// The CPU attention paths over packed batches (layers/attention.cc): equal-length buckets (a view
// of the batch or gathered rows), mixed lengths, and a prefill of several prompts at once give
// each sequence what it gets alone.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Model } from "../../src/native/model.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("packed-attention");
let model: Model;
before(async () => {
  const path = join(dir.path, "model");
  await writeTinyModel(path, { seed: 4, hiddenSize: 64, layers: 2, initStd: 0.2 });
  model = await Model.load(path, { device: "cpu", dtype: "float32" });
});
after(() => {
  model.dispose();
  dir.cleanup();
});

const sequence = (length: number, salt: number) =>
  Int32Array.from({ length }, (_, i) => (i * 5 + salt * 3 + 2) % 15);

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  return a.reduce((m, x, i) => Math.max(m, Math.abs(x - (b[i] as number))), 0);
}

/** Each sequence's logprobs and entropy in the packed batch against its own call. */
async function packedAgainstAlone(lengths: number[]): Promise<number> {
  const seqs = lengths.map((l, i) => sequence(l, i));
  const cu = Int32Array.from([
    0,
    ...lengths.map((_, i) => lengths.slice(0, i + 1).reduce((a, b) => a + b, 0)),
  ]);
  const packed = await model.logprobs(Int32Array.from(seqs.flatMap((s) => [...s])), cu);
  let worst = 0;
  let row = 0;
  for (const s of seqs) {
    const alone = await model.logprobs(s, Int32Array.from([0, s.length]));
    const n = s.length - 1;
    worst = Math.max(worst, maxDiff(packed.logprobs.slice(row, row + n), alone.logprobs));
    worst = Math.max(worst, maxDiff(packed.entropy.slice(row, row + n), alone.entropy));
    row += n;
  }
  return worst;
}

test("a packed batch of equal-length sequences (one causal call over a view) gives each its logprobs alone", async () => {
  assert.ok((await packedAgainstAlone([6, 6, 6, 6])) < 1e-5);
});

test("equal-length sequences interleaved with others (their rows gathered) give each its logprobs alone", async () => {
  assert.ok((await packedAgainstAlone([6, 9, 6, 3, 6, 9])) < 1e-5);
});

test("a prefill of prompts of several lengths generates, for each, the tokens and logprobs it gets alone", async () => {
  const prompts = [sequence(5, 1), sequence(8, 2), sequence(5, 3), sequence(3, 4)];
  const together = await model.generate(prompts, { maxNewTokens: 4 });
  for (const [i, p] of prompts.entries()) {
    const [alone] = await model.generate([p], { maxNewTokens: 4 });
    assert.deepEqual([...(together[i]?.tokens ?? [])], [...(alone?.tokens ?? [])]);
    assert.ok(maxDiff(together[i]?.logprobs as Float32Array, alone?.logprobs as Float32Array) < 1e-5);
  }
});
