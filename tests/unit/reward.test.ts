// The math verifiers on tricky answers (verl's math_dapo / math / gsm8k behaviour), and the
// worker-thread RewardRunner: same results as direct calls, timeouts, errors, concurrency.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  boxedMathScore,
  dapoMathScore,
  defaultComputeScore,
  extractGsm8kAnswer,
  gsm8kScore,
  lastBoxedOnlyString,
  normalizeFinalAnswer,
  RewardRunner,
  type RewardSample,
} from "../../src/rl/rewards/index.js";
import { callsPerMessage } from "../../src/rl/rewards/runner.js";

test("normalizeFinalAnswer mirrors verl's math_dapo", () => {
  const cases: Array<[string, string]> = [
    ["\\frac{1}{2}", "\\frac{1}{2}"],
    ["\\frac12", "\\frac{1}{2}"],
    ["\\dfrac12", "\\dfrac{1}{2}"], // verl does not map \dfrac to \frac
    ["1/2", "1/2"],
    ["1,000", "1000"],
    ["-1,000", "-1,000"], // Python's isdigit() is false for "-1000": commas stay
    ["5 cm", "5"],
    ["10\\text{ dollars}", "10"],
    ["$42$", "42"],
    ["\\boxed{7}", "7"],
    ["x = 3", "3"],
    ["\\text{(B)}", "(B)"],
    ["90^\\circ", "90"],
    ["\\sqrt2", "\\sqrt{2}"],
    ["3\\ 000", "3000"],
    ["  -4 ", "-4"],
    ["", ""],
  ];
  for (const [input, expected] of cases) {
    assert.equal(normalizeFinalAnswer(input), expected, `normalize(${JSON.stringify(input)})`);
  }
  // "1,000,000." keeps its commas: the trailing "." makes isdigit() false, exactly as in verl.
  assert.equal(normalizeFinalAnswer("1,000,000."), "1,000,000.");
});

test("dapoMathScore: last Answer: line wins, within the last 300 characters", () => {
  assert.deepEqual(dapoMathScore("work...\nAnswer: 3\nwait, no.\nAnswer: 5", "5"), {
    score: 1,
    acc: true,
    pred: "5",
  });
  assert.deepEqual(dapoMathScore("Answer: 5\nAnswer: 3", "5"), { score: -1, acc: false, pred: "3" });
  assert.equal(dapoMathScore("answer : \\frac12", "\\frac{1}{2}").acc, true);
  assert.equal(dapoMathScore("Answer: $\\dfrac{1}{2}$", "\\frac{1}{2}").acc, false); // as verl
  assert.equal(dapoMathScore("Answer: 1/2", "\\frac{1}{2}").acc, false); // as verl
  assert.equal(dapoMathScore("Answer: 1,000", "1000").acc, true);
  assert.equal(dapoMathScore("Answer: -7", "-7").acc, true);
  assert.equal(dapoMathScore("Answer: 7", "-7").acc, false);
  assert.equal(dapoMathScore("Answer: 12 cm", "12").acc, true);
  assert.equal(dapoMathScore("Answer: \\boxed{\\frac{3}{4}}", "\\frac{3}{4}").acc, true);
  assert.equal(dapoMathScore("Answer: x = 10", "10").acc, true);
  assert.deepEqual(dapoMathScore("", "5"), { score: -1, acc: false, pred: "[INVALID]" });
  // An "Answer:" beyond the last 300 characters is not seen.
  assert.equal(dapoMathScore(`Answer: 5\n${"x".repeat(300)}`, "5").pred, "[INVALID]");
});

test("lastBoxedOnlyString: balanced nested braces, \\fbox, unclosed", () => {
  assert.equal(
    lastBoxedOnlyString("a \\boxed{1} b \\boxed{\\frac{a}{b^{2}}} c"),
    "\\boxed{\\frac{a}{b^{2}}}",
  );
  assert.equal(lastBoxedOnlyString("so \\fbox{12}"), "\\fbox{12}");
  assert.equal(lastBoxedOnlyString("\\boxed{\\frac{1}{2}"), null);
  assert.equal(lastBoxedOnlyString("no box"), null);
  assert.equal(lastBoxedOnlyString("$\\boxed 5$"), "\\boxed 5");
});

test("boxedMathScore: 1/0 with math_dapo's normalisation", () => {
  assert.deepEqual(boxedMathScore("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"), {
    score: 1,
    acc: true,
    pred: "\\frac{1}{2}",
  });
  assert.equal(boxedMathScore("\\boxed{\\frac12}", "\\frac{1}{2}").score, 1);
  assert.equal(boxedMathScore("first \\boxed{3}, then \\boxed{4}", "4").score, 1);
  assert.equal(boxedMathScore("\\boxed{\\{1,2\\}}", "\\{1,2\\}").score, 1);
  assert.equal(boxedMathScore("\\fbox{1,000}", "1000").score, 1);
  assert.equal(boxedMathScore("\\boxed{5\\text{ cm}}", "5").score, 1);
  assert.equal(boxedMathScore("\\boxed{-3}", "\\boxed{-3}").score, 1);
  assert.deepEqual(boxedMathScore("", "1"), { score: 0, acc: false, pred: "" });
});

test("gsm8k: strict #### answer, last match, commas removed; flexible; format score", () => {
  assert.equal(gsm8kScore("3+4=7\n#### 7", "7"), 1);
  assert.equal(gsm8kScore("#### 1,234", "1234"), 1);
  assert.equal(gsm8kScore("#### 5\n#### -8", "-8"), 1);
  assert.equal(gsm8kScore("The answer is 7", "7"), 0);
  assert.equal(gsm8kScore("The answer is 7", "7", { method: "flexible" }), 1);
  assert.equal(gsm8kScore("#### 6", "7", { formatScore: 0.1 }), 0.1);
  assert.equal(gsm8kScore("", "7"), 0);
  assert.equal(extractGsm8kAnswer("#### $12"), null); // verl's regex needs a digit right after "#### "
  assert.equal(extractGsm8kAnswer("x 3. y .", "flexible"), "3.");
});

test("defaultComputeScore routes by data_source and rejects unknown ones", async () => {
  const s = (dataSource: string, response: string, groundTruth: string): RewardSample => ({
    prompt: "p",
    response,
    groundTruth,
    dataSource,
  });
  assert.equal((await defaultComputeScore(s("openai/gsm8k", "#### 3", "3"))).score, 1);
  assert.equal((await defaultComputeScore(s("lighteval/MATH", "\\boxed{3}", "3"))).score, 1);
  assert.equal((await defaultComputeScore(s("math_dapo", "Answer: 4", "3"))).score, -1);
  assert.equal((await defaultComputeScore(s("aime_2024", "Answer: 3", "3"))).score, 1);
  await assert.rejects(defaultComputeScore(s("nope", "", "")), /no verifier for data_source "nope"/);
});

const fnsModule = fileURLToPath(new URL("../helpers/reward-fns.js", import.meta.url));
const runners: RewardRunner[] = [];
after(() => Promise.all(runners.map((r) => r.close())));

test("RewardRunner (default registry) equals direct calls", async () => {
  const runner = new RewardRunner({ workers: 3 });
  runners.push(runner);
  const samples: RewardSample[] = [
    { prompt: "a", response: "#### 12", groundTruth: "12", dataSource: "openai/gsm8k" },
    { prompt: "b", response: "Answer: \\frac12", groundTruth: "\\frac{1}{2}", dataSource: "math_dapo" },
    { prompt: "c", response: "Answer: 3", groundTruth: "4", dataSource: "math_dapo" },
    { prompt: "d", response: "\\boxed{1,000}", groundTruth: "1000", dataSource: "HuggingFaceH4/MATH-500" },
    { prompt: "e", response: "", groundTruth: "1", dataSource: "unknown/source" },
  ];
  const outcomes = await runner.score(samples);
  for (const [i, sample] of samples.entries()) {
    const outcome = outcomes[i];
    assert.ok(outcome);
    if (sample.dataSource === "unknown/source") {
      assert.equal(outcome.status, "error");
      assert.equal(outcome.score, 0);
      assert.match(outcome.reason ?? "", /no verifier/);
      continue;
    }
    const { score, ...metrics } = await defaultComputeScore(sample);
    assert.equal(outcome.status, "ok");
    assert.equal(outcome.score, score);
    assert.deepEqual(outcome.metrics, metrics);
  }
});

test("RewardRunner: hung and spinning calls time out, the pool keeps working; errors are reported", async () => {
  const runner = new RewardRunner({
    fn: { module: fnsModule, exportName: "scripted" },
    workers: 2,
    timeoutMs: 300,
  });
  runners.push(runner);
  const mk = (prompt: string, extra: Record<string, unknown>): RewardSample => ({
    prompt,
    response: prompt,
    groundTruth: "",
    dataSource: "t",
    extra,
  });
  const t0 = performance.now();
  const [hang, spin, boom, ok] = await runner.score([
    mk("h", { mode: "hang" }),
    mk("s", { mode: "spin" }),
    mk("x", { mode: "throw" }),
    mk("okay", {}),
  ]);
  const elapsed = performance.now() - t0;
  assert.equal(hang?.status, "timeout");
  assert.equal(hang?.score, 0);
  assert.match(hang?.reason ?? "", /timed out after 300 ms/);
  assert.equal(spin?.status, "timeout");
  assert.ok((spin?.durationMs ?? 0) < 1000, `spin timed out after ${spin?.durationMs} ms`);
  assert.equal(boom?.status, "error");
  assert.equal(boom?.reason, "bad sample x");
  assert.equal(ok?.status, "ok");
  assert.equal(ok?.score, 4);
  assert.ok(elapsed < 3000, `took ${elapsed} ms`);
  assert.equal(runner.replacedWorkers, 2);
  // The replaced workers serve new calls.
  const again = await runner.score([mk("abc", {}), mk("de", {}), mk("f", {})]);
  assert.deepEqual(
    again.map((o) => o.score),
    [3, 2, 1],
  );
});

test("RewardRunner: a worker gets several calls per message and times each; a hung one fails alone", async () => {
  assert.equal(callsPerMessage(128, 4), 8);
  assert.equal(callsPerMessage(3, 4), 1);
  // One worker, 12 calls: three messages of 4; the hung call times out, the calls after it run
  // on the fresh worker, each with its own timeout (a 60 ms call is not cut by the ones before it).
  const runner = new RewardRunner({
    fn: { module: fnsModule, exportName: "scripted" },
    workers: 1,
    timeoutMs: 300,
  });
  runners.push(runner);
  const mk = (i: number, extra: Record<string, unknown>): RewardSample => ({
    prompt: `${i}`,
    response: "x".repeat(i + 1),
    groundTruth: "",
    dataSource: "t",
    extra,
  });
  const samples = Array.from({ length: 12 }, (_, i) => mk(i, i === 5 ? { mode: "hang" } : { ms: 60 }));
  const outcomes = await runner.score(samples);
  assert.deepEqual(
    outcomes.map((o) => o.status),
    samples.map((_, i) => (i === 5 ? "timeout" : "ok")),
  );
  assert.deepEqual(
    outcomes.map((o) => o.score),
    samples.map((_, i) => (i === 5 ? 0 : i + 1)),
  );
  assert.equal(runner.replacedWorkers, 1);
  // One call at a time: no two ran at once.
  const spans = outcomes
    .filter((o) => o.status === "ok")
    .map((o) => [o.metrics.startedAt as number, o.metrics.endedAt as number] as const)
    .sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++)
    assert.ok((spans[i]?.[0] as number) >= (spans[i - 1]?.[1] as number));
  // A sample that cannot be sent fails alone; the others of its message are scored.
  const mixed = await runner.score([mk(0, {}), mk(1, { f: () => 1 }), mk(2, {})]);
  assert.deepEqual(
    mixed.map((o) => o.status),
    ["ok", "error", "ok"],
  );
  assert.match(mixed[1]?.reason ?? "", /not transferable/);
});

test("RewardRunner: concurrency never exceeds the worker count; bad exports are reported", async () => {
  const runner = new RewardRunner({ fn: { module: fnsModule, exportName: "scripted" }, workers: 3 });
  runners.push(runner);
  const samples = Array.from({ length: 12 }, (_, i) => ({
    prompt: `${i}`,
    response: "r",
    groundTruth: "",
    dataSource: "t",
    extra: { ms: 40 },
  }));
  const outcomes = await runner.score(samples);
  const events = outcomes.flatMap((o) => [
    [o.metrics.startedAt as number, 1],
    [o.metrics.endedAt as number, -1],
  ]);
  events.sort((a, b) => (a[0] as number) - (b[0] as number) || (a[1] as number) - (b[1] as number));
  let live = 0;
  let peak = 0;
  for (const [, d] of events) {
    live += d as number;
    peak = Math.max(peak, live);
  }
  assert.equal(peak, 3);

  const bad = new RewardRunner({ fn: { module: fnsModule, exportName: "notAFunction" }, workers: 1 });
  runners.push(bad);
  const [o] = await bad.score([samples[0] as RewardSample]);
  assert.equal(o?.status, "error");
  assert.match(o?.reason ?? "", /no function export "notAFunction"/);
});

test("dapoMathScore (verl 0.9.1): without an Answer: line a \\boxed{} answer in the last 100 characters decides", () => {
  // Values from verl 0.9.1's math_dapo.compute_score.
  assert.deepEqual(dapoMathScore("so the result is \\boxed{5}", "5"), { score: 1, acc: true, pred: "5" });
  assert.deepEqual(dapoMathScore(`\\boxed{5}${"x".repeat(120)}`, "5"), {
    score: -1,
    acc: false,
    pred: "[INVALID]",
  });
  // An Answer: line wins over a box.
  assert.deepEqual(dapoMathScore("\\boxed{5}\nAnswer: 4", "5"), { score: -1, acc: false, pred: "4" });
});

test("dapoMathScore strict box mode: \\boxed{} required in the last 100 code points, compared as it is; pred null without one", () => {
  const strict = { strictBoxVerify: true };
  assert.deepEqual(dapoMathScore("so the result is \\boxed{5}", "5", strict), {
    score: 1,
    acc: true,
    pred: "5",
  });
  assert.deepEqual(dapoMathScore("Answer: 5", "5", strict), { score: -1, acc: false, pred: null });
  // No normalisation: the space inside the box must be in the ground truth too.
  assert.deepEqual(dapoMathScore(`${"x".repeat(200)}\\boxed{ 5}`, " 5", strict), {
    score: 1,
    acc: true,
    pred: " 5",
  });
  assert.equal(dapoMathScore(`${"x".repeat(200)}\\boxed{ 5}`, "5", strict).acc, false);
  // Python slices code points: 150 emoji (300 UTF-16 units) before the box leave it inside the last 100.
  assert.deepEqual(dapoMathScore(`${"😀".repeat(150)}\\boxed{5}`, "5", strict), {
    score: 1,
    acc: true,
    pred: "5",
  });
  assert.equal(
    dapoMathScore(`\\boxed{5}${"😀".repeat(95)}`, "5", strict).acc,
    false,
    "the box starts before the last 100 code points",
  );
});

test("default_compute_score routes math, math_dapo_reasoning and aime* to the DAPO verifier, as verl", async () => {
  const { verifierFor } = await import("../../src/rl/rewards/registry.js");
  for (const source of ["math_dapo", "math", "math_dapo_reasoning", "aime2024"]) {
    assert.equal(
      verifierFor(source)?.({ prompt: "", response: "Answer: 7", groundTruth: "7", dataSource: source })
        .score,
      1,
      source,
    );
  }
});
