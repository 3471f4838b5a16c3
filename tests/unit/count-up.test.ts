// The count-up task's answers and verifier: "472=" → "345" with partial credit per position, so
// that GRPO has signal before whole answers are right, and extra characters cost.
import assert from "node:assert/strict";
import { test } from "node:test";
import { COUNT_UP_SOURCE, countUpAnswer, countUpRows, countUpScore } from "../../src/rl/tasks/index.js";

const score = (response: string, groundTruth = "345") =>
  countUpScore({ prompt: "472=", response, groundTruth, dataSource: COUNT_UP_SOURCE });

test("count-up: the answer counts up three digits from the one after the last, mod 10", () => {
  assert.equal(countUpAnswer("472"), "345");
  assert.equal(countUpAnswer("008"), "901");
  assert.throws(() => countUpAnswer("4a2"), /not digits/);
  const rows = countUpRows();
  assert.equal(rows.length, 1000);
  assert.deepEqual(rows[472]?.reward_model, { style: "rule", ground_truth: "345" });
});

test("count-up: digits in place over max(3, length); exact answers alone count as accurate", () => {
  assert.deepEqual(score("345"), { score: 1, acc: 1, pred: "345" });
  assert.equal(score("395").score, 2 / 3);
  assert.equal(score("3457").score, 3 / 4, "an extra character dilutes the score");
  assert.equal(score("3").score, 1 / 3);
  assert.deepEqual(score(""), { score: 0, acc: 0, pred: "" });
  assert.equal(score("3457").acc, 0);
});
