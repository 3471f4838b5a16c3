// A quickstart task whose answers are several tokens long: "472=" → "345", the three digits
// counting up from the one after the prompt's last (mod 10), then <eos>. Each answer token follows
// from the one before it by the same +1 rule that picks the first, so a tiny model learns it from
// random weights on a CPU within minutes, while the inspector and the length views show real
// multi-token responses (some stop early, some run to the limit). Same model and tokenizer as
// the next-digit task.
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { ExperimentConfig } from "../config.js";
import { COUNT_UP_SOURCE } from "./count-up-reward.js";
import { type TinyModelOptions, writeTinyModel } from "./next-digit.js";

export { COUNT_UP_SOURCE, countUpScore } from "./count-up-reward.js";

/** The answer to "abc=": (c+1, c+2, c+3) mod 10 as text. */
export function countUpAnswer(digits: string): string {
  const last = Number(digits.at(-1));
  if (!/^\d+$/.test(digits)) throw new RangeError(`countUpAnswer: ${JSON.stringify(digits)} is not digits`);
  return [1, 2, 3].map((k) => String((last + k) % 10)).join("");
}

/** Every three-digit "abc=" (1,000 prompts), as verl-layout JSONL rows. */
export function countUpRows(): Record<string, unknown>[] {
  return Array.from({ length: 1000 }, (_, n) => {
    const digits = String(n).padStart(3, "0");
    return {
      data_source: COUNT_UP_SOURCE,
      prompt: [{ role: "user", content: `${digits}=` }],
      ability: "count-up",
      reward_model: { style: "rule", ground_truth: countUpAnswer(digits) },
      extra_info: { index: n },
    };
  });
}

export interface CountUpSetup {
  modelPath: string;
  dataFile: string;
  /** A GRPO config that learns the task within a minute on two CPU cores (360 steps). */
  config: ExperimentConfig;
}

/**
 * Writes the tiny model (once) and the prompts under `dir`; returns a GRPO config: 16 prompts × 8
 * answers of up to 5 tokens per step, the reward from countUpScore. `overrides` replace top-level settings.
 * lr 5e-4 (2 CPU cores, 360 steps, ~40 s): mean reward over 10 steps 0.04 → 0.81 / 0.90 / 0.81 (run
 * seeds 1 and 2, model seed 2); 3e-3 stalled at 0.13 with responses at the length limit, 1e-3 0.63.
 */
export async function prepareCountUp(
  dir: string,
  overrides: Partial<ExperimentConfig> = {},
  options: TinyModelOptions = {},
): Promise<CountUpSetup> {
  const modelPath = resolve(dir, "model");
  if (!existsSync(join(modelPath, "config.json"))) await writeTinyModel(modelPath, { seed: 1, ...options });
  const dataDir = resolve(dir, "data");
  mkdirSync(dataDir, { recursive: true });
  const dataFile = join(dataDir, "train.jsonl");
  writeFileSync(
    dataFile,
    `${countUpRows()
      .map((r) => JSON.stringify(r))
      .join("\n")}\n`,
  );
  const reward = fileURLToPath(new URL("./count-up-reward.js", import.meta.url));
  const config: ExperimentConfig = {
    name: "count-up",
    seed: 1,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 16,
    rollout: { samplesPerPrompt: 8, maxResponseTokens: 5, temperature: 1 },
    tokensPerMicroBatch: 4096,
    algorithm: { advantage: "grpo", loss: { aggMode: "token-mean", clipRatioLow: 0.2, clipRatioHigh: 0.28 } },
    optimizer: { lr: 5e-4, weightDecay: 0 },
    reward: { fn: { module: reward, exportName: "countUpScore" } },
    totalSteps: 360,
    ...overrides,
  };
  return { modelPath, dataFile, config };
}
