// Rewards: rule-based verifiers (verl's reward_score ports), the data_source registry, and the
// worker-thread runner that executes reward functions off the main thread.
export {
  boxedMathScore,
  dapoMathScore,
  extractGsm8kAnswer,
  type Gsm8kOptions,
  gsm8kScore,
  lastBoxedOnlyString,
  type MathScore,
  normalizeFinalAnswer,
  removeBoxed,
} from "./math.js";
export { defaultComputeScore, defaultComputeScoreRef, verifierFor, verifiers } from "./registry.js";
export { type RewardOutcome, RewardRunner, type RewardRunnerOptions } from "./runner.js";
export type { RewardFn, RewardFnRef, RewardResult, RewardSample } from "./types.js";
