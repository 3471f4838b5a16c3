// The planner: memory per rank, communication per group and step time for a model, a cluster and
// an RL step (`plan`), the layouts that fit ranked (`search`), and the FLOP model perf/mfu/actor uses.
export {
  type Assumptions,
  defaultAssumptions,
  type OffloadInput,
  type PlanBatch,
  type PlanConfig,
  PlanConfigError,
  type ResolvedPlanConfig,
  resolvePlanConfig,
} from "./config.js";
export { attentionForwardFlops, forwardFlops, forwardFlopsPerToken, trainingFlops } from "./flops.js";
export { formatPlan, formatSearch } from "./format.js";
export { type GpuType, gpuTypes, resolveGpu } from "./gpus.js";
export {
  LayoutError,
  type RolloutLayout,
  type RolloutLayoutInput,
  resolveRolloutLayout,
  resolveTrainLayout,
  stageLayers,
  type TrainLayout,
  type TrainLayoutInput,
} from "./layout.js";
export {
  type DeviceKind,
  type Dtype,
  kvBytesPerToken,
  localElements,
  type OptimizerMemory,
  type Recompute,
  type StaticMemory,
  stageStatic,
} from "./memory.js";
export {
  type ModelSpec,
  modelSpec,
  type ParameterCounts,
  type PlanTensor,
  parameterCounts,
  readHfConfig,
  supportedPlanArchitectures,
} from "./model.js";
export {
  describeTrain,
  fmt as formatBytes,
  type MemoryBreakdown,
  type Phase,
  type Plan,
  plan,
  planFor,
  type RolloutPlan,
  type StagePlan,
  type TimeEstimate,
} from "./plan.js";
export { PlanSearchError, type RankedLayout, type SearchResult, search } from "./search.js";
export type { GroupTraffic } from "./traffic.js";
