// The verifier of the colour-square task (src/rl/tasks/colour-square.ts): the answer is the first
// letter of the square's colour, "r", "g" or "b". Kept apart from the task so reward threads load
// no engine.
import type { RewardResult, RewardSample } from "../rewards/types.js";

export const COLOUR_SQUARE_SOURCE = "tiller/colour-square";

export function colourSquareScore(sample: RewardSample): RewardResult {
  const pred = sample.response.trim().charAt(0);
  const correct = pred !== "" && pred === sample.groundTruth;
  return { score: correct ? 1 : 0, acc: correct ? 1 : 0, pred };
}
