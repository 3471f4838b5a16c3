// The verifier of the count-up task (count-up.ts): "472=" answered by the three digits counting
// up from the one after the last ("345"). Partial credit per position, so that GRPO has signal
// before whole answers are right. Kept apart from the task's writer so reward threads load no engine.
import type { RewardResult, RewardSample } from "../rewards/types.js";

export const COUNT_UP_SOURCE = "tiller/count-up";

/**
 * Score: the digits in the right place over max(3, response length) — "345" scores 1, "3457"
 * 0.75 (extra characters dilute it), "395" 0.67, "" 0; acc is 1 for the exact answer; pred the response.
 */
export function countUpScore(sample: RewardSample): RewardResult {
  const pred = sample.response.trim();
  const truth = sample.groundTruth.trim();
  let right = 0;
  for (let i = 0; i < truth.length; i++) if (pred[i] === truth[i]) right++;
  const score = right / Math.max(truth.length, pred.length);
  return { score, acc: pred === truth ? 1 : 0, pred };
}
