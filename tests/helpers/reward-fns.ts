// Reward functions loaded by the RewardRunner tests inside worker threads.
import type { RewardResult, RewardSample } from "../../src/rl/rewards/index.js";
import { nextDigitScore } from "../../src/rl/rewards/next-digit.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Scores by `extra.mode`: "hang" never resolves, "spin" blocks the thread, "throw" throws, else waits extra.ms. */
export async function scripted(sample: RewardSample): Promise<RewardResult> {
  const extra = sample.extra ?? {};
  const startedAt = performance.timeOrigin + performance.now();
  if (extra.mode === "hang") await new Promise(() => {});
  if (extra.mode === "spin") for (;;) {}
  if (extra.mode === "throw") throw new Error(`bad sample ${sample.prompt}`);
  await sleep(Number(extra.ms ?? 0));
  return { score: sample.response.length, startedAt, endedAt: performance.timeOrigin + performance.now() };
}

/**
 * The next-digit verifier after a wait ($TILLER_TEST_REWARD_MS of the controller, default 50 ms):
 * a reward thread scores one response at a time, so a step of 32 responses scores for 1.6 s, long
 * enough for an Interrupt to land inside the stage.
 */
export async function slowNextDigit(sample: RewardSample): Promise<RewardResult> {
  await sleep(Number(process.env.TILLER_TEST_REWARD_MS ?? 50));
  return nextDigitScore(sample);
}

export const notAFunction = 42;
