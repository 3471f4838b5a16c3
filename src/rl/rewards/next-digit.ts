// The verifier of the quickstart's built-in task (src/rl/tasks/next-digit.ts): "472=" answered by
// the digit after the last one ("3"). Kept apart from the task's writer so reward threads load no engine.
import type { RewardResult, RewardSample } from "./types.js";

export const NEXT_DIGIT_SOURCE = "tiller/next-digit";

/** Score 1 when the response starts with the right digit, else 0; acc as the score, pred the digit. */
export function nextDigitScore(sample: RewardSample): RewardResult {
  const pred = sample.response.trim().charAt(0);
  const correct = pred !== "" && pred === sample.groundTruth.trim();
  return { score: correct ? 1 : 0, acc: correct ? 1 : 0, pred };
}
