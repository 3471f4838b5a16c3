// Per-prompt output lengths (`generate(prompts, { maxNewTokens: [..] })`, as the nano-vllm bench
// shape asks for): each sequence stops at its own limit, takes the tokens it takes with a shared
// limit, and bad lists are refused naming the field.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Model } from "../../src/index.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("generate-limits");
let model: Model;
const vocab = 500;

before(async () => {
  await writeTinyModel(dir.path, { hiddenSize: 32, layers: 2, vocabSize: vocab, seed: 5 });
  model = await Model.load(dir.path, { device: "cpu", dtype: "float32" });
});

after(() => {
  model?.dispose();
  dir.cleanup();
});

const prompts = [0, 1, 2, 3].map((i) =>
  Int32Array.from({ length: 3 + 2 * i }, (_, t) => (i * 97 + t * 31 + 1) % vocab),
);

test("one limit per prompt: each sequence ends at its own length with reason 'length', its tokens the prefix of a shared-limit run", async () => {
  const limits = [0, 3, 9, 1];
  const each = await model.generate(prompts, { maxNewTokens: limits });
  const shared = await model.generate(prompts, { maxNewTokens: 9 });
  for (const [i, g] of each.entries()) {
    assert.equal(g.tokens.length, limits[i], `prompt ${i}`);
    assert.equal(g.finishReason, "length");
    assert.deepEqual([...g.tokens], [...(shared[i]?.tokens ?? [])].slice(0, limits[i]), `prompt ${i}`);
    assert.equal(g.logprobs.length, limits[i]);
  }
});

test("per-prompt limits are refused when their count or a value is wrong, naming the field", async () => {
  await assert.rejects(
    async () => model.generate(prompts, { maxNewTokens: [1, 2] }),
    /maxNewTokens: 2 limits for 4 prompts/,
  );
  await assert.rejects(
    async () => model.generate(prompts, { maxNewTokens: [1, 2, -1, 3] }),
    /maxNewTokens\[2\]/,
  );
});
