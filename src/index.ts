// The package's public surface.
export { type CallOptions, Cluster, type ConnectOptions, connect, TillerError } from "./client/client.js";
export {
  Experiment,
  type MetricsRow,
  prepareConfig,
  type RunOptions,
  type StageResult,
} from "./client/experiment.js";
export * from "./native/critic.js";
export * from "./native/dist.js";
export * from "./native/engine.js";
export * from "./native/io.js";
export * from "./native/model.js";
export * from "./native/policy-loss.js";
export * from "./native/train.js";
export * as notebook from "./notebook/index.js";
export { ConfigError, type ExperimentConfig, resolveConfig } from "./rl/config.js";
export * as rl from "./rl/index.js";
export * from "./tokenizer/index.js";
