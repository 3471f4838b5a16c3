// Prompt datasets: verl-layout JSONL and Parquet (written by pyarrow) read to the same rows;
// long prompts filtered and counted; seeded order reproducible; epochs; state()/restore().
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type ChatMessage, PromptDataset, readPromptRows } from "../../src/rl/data.js";
import { runPython, tempDir } from "../helpers/python.js";

const dir = tempDir("dataset");
let expected: Array<{ prompt: ChatMessage[]; data_source: string; reward_model: { ground_truth: string } }>;
before(() => {
  expected = JSON.parse(runPython("prompt_data.py", [dir.path]));
});
after(() => dir.cleanup());

// A stand-in chat template: one token per whitespace-separated word plus 2 per message.
const tokenize = (messages: ChatMessage[]) =>
  messages.flatMap((m) => [
    1,
    ...m.content
      .split(/\s+/)
      .filter(Boolean)
      .map((w) => w.length),
    2,
  ]);

test("Parquet (nested list, struct) and JSONL read to the same rows", async () => {
  const fromParquet = await readPromptRows(join(dir.path, "good.parquet"));
  const fromJsonl = await readPromptRows(join(dir.path, "good.jsonl"));
  assert.equal(fromParquet.length, 6);
  for (const [i, row] of fromParquet.entries()) {
    const want = expected[i];
    assert.ok(want);
    assert.deepEqual(row.prompt, want.prompt);
    assert.equal(row.dataSource, want.data_source);
    assert.deepEqual(row.rewardModel, { groundTruth: want.reward_model.ground_truth, style: "rule" });
    assert.deepEqual(row.extraInfo, { index: i, split: "train" });
    assert.equal(row.row, i);
    const { file: _a, ...p } = row;
    const { file: _b, ...j } = fromJsonl[i] as typeof row;
    assert.deepEqual(p, j);
  }
});

test("errors name the file, the row and the field", async () => {
  await assert.rejects(readPromptRows(join(dir.path, "bad.parquet")), (e: Error) => {
    assert.match(e.message, /bad\.parquet: row 0: field "reward_model\.ground_truth" must be a string/);
    return true;
  });
  const jsonl = join(dir.path, "bad.jsonl");
  writeFileSync(
    jsonl,
    `${JSON.stringify({ prompt: [{ role: "user", content: "hi" }], data_source: "x", reward_model: { ground_truth: "1" } })}\n\n` +
      `${JSON.stringify({ prompt: [{ role: "user" }], data_source: "x", reward_model: { ground_truth: "1" } })}\n`,
  );
  await assert.rejects(
    readPromptRows(jsonl),
    /bad\.jsonl: line 3: field "prompt\[0\]\.content" must be a string, got nothing \(missing\)/,
  );
  writeFileSync(jsonl, "{not json SECRET-TEXT\n");
  await assert.rejects(readPromptRows(jsonl), (e: Error) => {
    assert.match(e.message, /bad\.jsonl: line 1: not valid JSON \(21 characters\)/);
    // The line's content never comes back in the error (a remote client could read files so).
    assert.doesNotMatch(e.message, /SECRET|not json/);
    return true;
  });
});

test("PromptDataset: filtering, seeded order, epochs, resumable state", async () => {
  const file = join(dir.path, "good.parquet");
  // Row i has 2 + i*3 words in its user message (+ a 2-word system message for even i).
  const ds = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 12,
    seed: 7,
  });
  const lengths = (await readPromptRows(file)).map((r) => tokenize(r.prompt).length);
  assert.equal(ds.filteredOut, lengths.filter((n) => n > 12).length);
  assert.ok(ds.filteredOut > 0 && ds.size > 1);
  assert.ok(ds.items.every((it) => it.promptTokenIds.length <= 12));

  const all = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    seed: 7,
  });
  assert.equal(all.size, 6);
  const ids = (d: PromptDataset, n: number, k: number) =>
    Array.from({ length: n }, () => d.nextBatch(k).map((it) => it.row.row));
  const run1 = ids(all, 6, 2); // 3 batches per epoch → two epochs
  const again = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    seed: 7,
  });
  assert.deepEqual(ids(again, 6, 2), run1, "same seed, same order");
  const epoch0 = run1.slice(0, 3).flat();
  const epoch1 = run1.slice(3).flat();
  assert.deepEqual([...epoch0].sort(), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual([...epoch1].sort(), [0, 1, 2, 3, 4, 5]);
  assert.notDeepEqual(epoch0, epoch1, "each epoch has its own permutation");
  const other = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    seed: 8,
  });
  assert.notDeepEqual(ids(other, 3, 2).flat(), epoch0);

  // drop_last: batches of 4 from 6 → one per epoch.
  const d4 = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    seed: 7,
  });
  d4.nextBatch(4);
  d4.nextBatch(4);
  assert.equal(d4.currentEpoch, 1);

  // Resume mid-epoch-1 on a fresh dataset.
  const a = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    seed: 7,
  });
  ids(a, 4, 2);
  const saved = JSON.parse(JSON.stringify(a.state()));
  const rest = ids(a, 4, 2);
  const b = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    seed: 7,
  });
  b.restore(saved);
  assert.deepEqual(ids(b, 4, 2), rest);
  assert.throws(() => other.restore(saved), /saved state is for seed=7/);

  const unshuffled = await PromptDataset.fromFiles(file, {
    applyChatTemplate: tokenize,
    maxPromptTokens: 1000,
    shuffle: false,
  });
  assert.deepEqual(ids(unshuffled, 2, 3).flat(), [0, 1, 2, 3, 4, 5]);
  assert.throws(
    () => new PromptDataset([], { applyChatTemplate: tokenize, maxPromptTokens: 1 }),
    /the training files hold no prompts/,
  );
});
