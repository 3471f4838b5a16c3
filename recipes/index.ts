// Typed experiment configs translated from verl's example scripts, by name. Each takes overrides
// (RecipeOptions) and returns an ExperimentConfig for resolveConfig / cluster.experiment().
import type { ExperimentConfig } from "../src/rl/config.js";
import type { RecipeOptions } from "./common.js";
import { dapo } from "./dapo.js";
import { deepseekV3_671b } from "./deepseek-v3-671b.js";
import { grpoGsm8k } from "./grpo-gsm8k.js";
import { qwen3_235b } from "./qwen3-235b.js";

export { home, miniBatchesOf, type RecipeOptions, updatesOf } from "./common.js";
export { dapo, dapoVerlLayout, qwen25_32bShape } from "./dapo.js";
export { deepseekV3_671b, deepseekV3Shape, deepseekV3VerlLayout } from "./deepseek-v3-671b.js";
export { grpoGsm8k, qwen2_7bShape } from "./grpo-gsm8k.js";
export { qwen3_235b, qwen3_235bShape, qwen3_235bVerlLayout } from "./qwen3-235b.js";

export type RecipeName = "grpo-gsm8k" | "dapo" | "deepseek-v3-671b" | "qwen3-235b";

/** Every recipe by its name (the file name). */
export const recipes: Record<RecipeName, (options?: RecipeOptions) => ExperimentConfig> = {
  "grpo-gsm8k": grpoGsm8k,
  dapo,
  "deepseek-v3-671b": deepseekV3_671b,
  "qwen3-235b": qwen3_235b,
};

/** The recipe called `name`, with its overrides; an unknown name lists the known ones. */
export function recipe(name: string, options: RecipeOptions = {}): ExperimentConfig {
  if (!Object.hasOwn(recipes, name)) {
    throw new RangeError(`recipe ${JSON.stringify(name)}; known: ${Object.keys(recipes).join(", ")}`);
  }
  return recipes[name as RecipeName](options);
}
