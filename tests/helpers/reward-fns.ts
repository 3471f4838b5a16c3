// Reward functions loaded by the RewardRunner tests inside worker threads.
import type { RewardResult, RewardSample } from "../../src/rl/rewards/index.js";

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

export const notAFunction = 42;
