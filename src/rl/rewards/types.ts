// The reward-function contract shared by the runner, its workers and the built-in verifiers.

/** One rollout sample to score. `extra` is the dataset row's extra_info (structured-cloneable). */
export interface RewardSample {
  prompt: string;
  response: string;
  groundTruth: string;
  dataSource: string;
  extra?: Record<string, unknown>;
}

/** A reward function's result: `score` plus any metrics (verl's reward_extra_info). */
export interface RewardResult {
  score: number;
  [metric: string]: unknown;
}

/** A reward function; it may be sync or async. It must be exported from a module (see RewardFnRef). */
export type RewardFn = (sample: RewardSample) => Promise<RewardResult> | RewardResult;

/**
 * Where a worker finds a reward function: `module` is an absolute path, a file:// URL or a package
 * specifier; `exportName` the named export ("default" for a default export).
 */
export interface RewardFnRef {
  module: string;
  exportName: string;
}
