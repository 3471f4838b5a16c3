// RL algorithms as pure functions over per-response scalars and lengths (no tensors): advantage
// estimators, DAPO filtering and shaping, KL penalties, the micro-batch plan, and the metrics log.
export * from "./advantages.js";
export * from "./balance.js";
export * from "./config.js";
export * from "./data.js";
export * from "./filter.js";
export * from "./groups.js";
export * from "./kl.js";
export * from "./metrics.js";
export * from "./metrics.js";
export * from "./rollout-correction.js";
export * from "./rollouts.js";
export * as tasks from "./tasks/index.js";
export * from "./validation.js";
