// data_source → verifier, as verl's default_compute_score (verl/utils/reward_score/__init__.py).

import { boxedMathScore, dapoMathScore, gsm8kScore } from "./math.js";
import { NEXT_DIGIT_SOURCE, nextDigitScore } from "./next-digit.js";
import type { RewardFnRef, RewardResult, RewardSample } from "./types.js";

type Verifier = (sample: RewardSample) => RewardResult;

const gsm8k: Verifier = (s) => ({ score: gsm8kScore(s.response, s.groundTruth) });
const boxed: Verifier = (s) => {
  const r = boxedMathScore(s.response, s.groundTruth);
  return { score: r.score, acc: r.acc, pred: r.pred };
};
const dapo: Verifier = (s) => {
  const r = dapoMathScore(s.response, s.groundTruth);
  return { score: r.score, acc: r.acc, pred: r.pred };
};

/** The data sources verl's default_compute_score routes to the verifiers ported here. */
export const verifiers: Readonly<Record<string, Verifier>> = {
  "openai/gsm8k": gsm8k,
  "lighteval/MATH": boxed,
  "DigitalLearningGmbH/MATH-lighteval": boxed,
  "HuggingFaceH4/MATH-500": boxed,
  math_dapo: dapo,
  math: dapo,
  math_dapo_reasoning: dapo,
  /** The quickstart's built-in task (not in verl). */
  [NEXT_DIGIT_SOURCE]: nextDigitScore,
};

/** The verifier for a data_source, or undefined. Like verl, any source starting with "aime" is DAPO math. */
export function verifierFor(dataSource: string): Verifier | undefined {
  return verifiers[dataSource] ?? (dataSource.startsWith("aime") ? dapo : undefined);
}

/** verl's default_compute_score: routes by `sample.dataSource`; throws for an unknown source. */
export async function defaultComputeScore(sample: RewardSample): Promise<RewardResult> {
  const verifier = verifierFor(sample.dataSource);
  if (verifier === undefined) {
    throw new Error(
      `no verifier for data_source ${JSON.stringify(sample.dataSource)}; known: ${Object.keys(verifiers).join(", ")}, aime*. ` +
        "Pass your own reward function to RewardRunner ({module, exportName}).",
    );
  }
  return verifier(sample);
}

/** A RewardFnRef to defaultComputeScore, for RewardRunner. */
export const defaultComputeScoreRef: RewardFnRef = {
  module: new URL("./registry.js", import.meta.url).href,
  exportName: "defaultComputeScore",
};
