// What every recipe takes and a few conversions from verl's units to ours, shared by the recipes.
import { homedir } from "node:os";
import { join } from "node:path";
import type { ExperimentConfig, ModelShape, ParallelLayout } from "../src/rl/config.js";

/** Overrides a recipe takes; everything else is the verl script's value (spread the result to change more). */
export interface RecipeOptions {
  /** An HF model folder (config.json, safetensors, tokenizer). Default: where the verl script keeps it. */
  modelPath?: string;
  /** Prompt files in verl's layout (Parquet or JSONL). Default: the verl script's data.train_files. */
  trainFiles?: string | string[];
  /** Run folder; default `runs/<name>-<time>`. */
  runDir?: string;
  name?: string;
  seed?: number;
  /** Steps run() makes when not told; default: the verl script's length (see each recipe). */
  totalSteps?: number;
  /** GPUs and layout; default: see each recipe. */
  parallel?: ParallelLayout & { gpus?: number };
  /** The model's shape for validating `parallel`; `null` leaves it out. Default: see each recipe. */
  shape?: ModelShape | null;
}

/** `$HOME/<parts>`, as verl's scripts write their default paths. */
export const home = (...parts: string[]): string => join(homedir(), ...parts);

/**
 * verl's ppo_mini_batch_size counts prompts; ours counts optimizer updates per step:
 * miniBatchesPerStep = train_batch_size / ppo_mini_batch_size (verl asserts it divides).
 */
export function miniBatchesOf(trainBatchSize: number, ppoMiniBatchSize: number): number {
  if (!Number.isInteger(trainBatchSize / ppoMiniBatchSize)) {
    throw new RangeError(
      `ppo_mini_batch_size ${ppoMiniBatchSize} does not divide train_batch_size ${trainBatchSize}`,
    );
  }
  return trainBatchSize / ppoMiniBatchSize;
}

/**
 * verl steps its LR scheduler once per training step (update_actor); ours steps once per optimizer
 * update, so verl's lr_warmup_steps become steps × miniBatchesPerStep × epochsPerStep updates.
 */
export const updatesOf = (verlSteps: number, miniBatchesPerStep: number, epochsPerStep = 1): number =>
  verlSteps * miniBatchesPerStep * epochsPerStep;

/** The shape when given, else `fallback` (`null` given: none). */
export function shapeOf(options: RecipeOptions, fallback: ModelShape | undefined): ModelShape | undefined {
  if (options.shape === null) return undefined;
  return options.shape ?? fallback;
}

/** name, runDir, seed and totalSteps from the options (absent ones left to resolveConfig). */
export function runFields(
  options: RecipeOptions,
  name: string,
  totalSteps?: number,
): Pick<ExperimentConfig, "name" | "runDir" | "seed" | "totalSteps"> {
  const steps = options.totalSteps ?? totalSteps;
  return {
    name: options.name ?? name,
    ...(options.runDir !== undefined ? { runDir: options.runDir } : {}),
    ...(options.seed !== undefined ? { seed: options.seed } : {}),
    ...(steps !== undefined ? { totalSteps: steps } : {}),
  };
}

/** `model` with the shape only when there is one. */
export function modelField(path: string, shape: ModelShape | undefined): ExperimentConfig["model"] {
  return shape ? { path, shape } : { path };
}
