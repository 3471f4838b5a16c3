// The package's public surface.
// Arrow: the tables tiller hands back are apache-arrow's. Re-exported from here so that a notebook
// in another project names their types through "tiller" (tslab emits declarations for top-level
// consts; without these, TS2742 says the type needs a path into tiller/node_modules/apache-arrow).
export * as arrow from "apache-arrow";
export {
  type DataType,
  Field,
  RecordBatch,
  Schema,
  Table,
  Type,
  tableFromArrays,
  tableFromIPC,
  tableToIPC,
  Vector,
} from "apache-arrow";
export {
  type CallOptions,
  Cluster,
  type ConnectOptions,
  connect,
  type LivenessOptions,
  TillerError,
} from "./client/client.js";
export {
  Experiment,
  type Hook,
  type HookContext,
  HookError,
  type HookPoint,
  isPaused,
  type MetricsRow,
  type Paused,
  prepareConfig,
  type ReplayResult,
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
export * as planner from "./plan/index.js";
export {
  formatPlan,
  formatSearch,
  type GpuType,
  gpuTypes,
  LayoutError,
  modelSpec,
  type Plan,
  type PlanConfig,
  PlanConfigError,
  PlanSearchError,
  parameterCounts,
  plan,
  type SearchResult,
  type StagePlan,
  search,
} from "./plan/index.js";
export { ConfigError, type ExperimentConfig, type ResolvedConfig, resolveConfig } from "./rl/config.js";
export * as rl from "./rl/index.js";
export * from "./tokenizer/index.js";
export * from "./vision/index.js";
