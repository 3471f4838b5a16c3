// `plan --search`: every layout the model's shape allows on the cluster (tensor within a node,
// pipeline, expert, rollout tensor, with and without full recompute and offload), those that do
// not fit dropped, the rest ranked by estimated step time. Sizes the config sets stay fixed.
import { type PlanConfig, resolvePlanConfig } from "./config.js";
import { LayoutError, type TrainLayoutInput } from "./layout.js";
import { type ModelSpec, modelSpec } from "./model.js";
import { fmt, type Plan, planFor } from "./plan.js";

export interface RankedLayout {
  plan: Plan;
  /** One line: what the time goes to and how much memory is left. */
  why: string;
}

export interface SearchResult {
  /** Layouts tried, those the model's shape allows, and those that fit. */
  candidates: number;
  valid: number;
  fitting: number;
  ranked: RankedLayout[];
  elapsedMs: number;
}

export class PlanSearchError extends RangeError {
  constructor(
    message: string,
    /** Bytes per GPU the closest layout lacks. */
    readonly shortBytes: number,
    readonly closest?: Plan,
  ) {
    super(message);
    this.name = "PlanSearchError";
  }
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}

export function describeChoice(p: Plan): string {
  const c = p.config;
  const o = c.offload;
  const offload =
    o.parameters && o.optimizer
      ? "offload all"
      : o.parameters
        ? "offload parameters"
        : o.optimizer
          ? "offload optimizer"
          : "no offload";
  return `train ${p.train.describe}, rollout TP${p.rollout.tensor}, ${offload}, recompute ${c.recompute}`;
}

function why(p: Plan): string {
  const total = p.time.totalSeconds;
  const parts = [...p.time.parts].sort((x, y) => y.seconds - x.seconds).slice(0, 2);
  const share = parts.map((x) => `${x.name} ${((100 * x.seconds) / total).toFixed(0)}%`).join(", ");
  const r = p.rollout;
  const kv =
    r.concurrentSequences >= r.sequencesPerReplica
      ? `the KV cache holds all ${r.sequencesPerReplica} sequences of a replica`
      : `the KV cache holds ${r.concurrentSequences} of ${r.sequencesPerReplica} sequences per replica`;
  const t = p.trainingPeak;
  return `${share}; training peak ${fmt(t.bytes)} of ${fmt(p.cluster.usableBytesPerGpu)} usable (${t.phase}, stage ${t.stage}); ${kv}`;
}

/**
 * Ranked layouts for `config` (its model, GPUs, batch; train/rollout sizes it gives are kept,
 * the others searched). Throws PlanSearchError naming the smallest shortfall when none fits.
 */
export function search(config: PlanConfig, options: { top?: number } = {}): SearchResult {
  const started = Date.now();
  const top = options.top ?? 5;
  const c = resolvePlanConfig(config);
  const spec: ModelSpec = modelSpec(c.model);
  const gpus = c.gpus;
  const fixed = config.train ?? {};
  const pick = (key: keyof TrainLayoutInput, values: number[]) => {
    const v = fixed[key];
    return typeof v === "number" ? [v] : values;
  };
  const tensors = pick(
    "tensor",
    divisors(gpus).filter((t) => t <= c.gpu.gpusPerNode),
  );
  const rolloutTensors =
    config.rollout?.tensor !== undefined
      ? [config.rollout.tensor]
      : divisors(gpus).filter((t) => t <= 4 * c.gpu.gpusPerNode);
  const recomputes = config.recompute !== undefined ? [c.recompute] : (["none", "full"] as const);
  const offloads =
    config.offload !== undefined
      ? [c.offload]
      : [
          { parameters: false, optimizer: false },
          { parameters: true, optimizer: true },
        ];
  let candidates = 0;
  let valid = 0;
  const fitting: Plan[] = [];
  let closest: Plan | undefined;
  for (const tensor of tensors) {
    for (const pipeline of pick(
      "pipeline",
      divisors(gpus / tensor).filter((p) => p <= spec.layers),
    )) {
      const stage = gpus / pipeline;
      const experts = spec.moe
        ? pick(
            "expert",
            divisors(stage).filter((e) => spec.moe && spec.moe.experts % e === 0),
          )
        : [1];
      for (const expert of experts) {
        const train: TrainLayoutInput = {
          ...fixed,
          tensor,
          pipeline,
          expert,
          sequenceParallel: fixed.sequenceParallel ?? tensor > 1,
        };
        for (const rolloutTensor of rolloutTensors) {
          for (const recompute of recomputes) {
            for (const offload of offloads) {
              candidates++;
              let p: Plan;
              try {
                p = planFor(spec, {
                  ...c,
                  train,
                  rollout: { ...c.rollout, tensor: rolloutTensor },
                  recompute,
                  offload,
                });
              } catch (error) {
                if (error instanceof LayoutError) continue;
                throw error;
              }
              valid++;
              if (p.fits) fitting.push(p);
              else if (!closest || p.shortBytes < closest.shortBytes) closest = p;
            }
          }
        }
      }
    }
  }
  if (fitting.length === 0) {
    const gpu = `${gpus} × ${c.gpu.name}`;
    if (!closest) {
      throw new PlanSearchError(
        `${spec.architecture} on ${gpu}: no layout the model's shape allows (${candidates} tried)`,
        Infinity,
      );
    }
    throw new PlanSearchError(
      `${spec.architecture} (${(closest.model.parameters.total / 1e9).toFixed(1)}B parameters) does not fit on ${gpu} in any of the ${valid} valid layouts: ` +
        `the closest (${describeChoice(closest)}) is ${fmt(closest.shortBytes)} per GPU short ` +
        `(needs ${fmt(closest.cluster.usableBytesPerGpu + closest.shortBytes)}, ${fmt(closest.cluster.usableBytesPerGpu)} usable)`,
      closest.shortBytes,
      closest,
    );
  }
  // Faster first; equal times (to 0.1%): the one with more memory left first.
  fitting.sort((x, y) => {
    const dt = x.time.totalSeconds - y.time.totalSeconds;
    return Math.abs(dt) > 1e-3 * y.time.totalSeconds ? dt : x.trainingPeak.bytes - y.trainingPeak.bytes;
  });
  return {
    candidates,
    valid,
    fitting: fitting.length,
    ranked: fitting.slice(0, top).map((plan) => ({ plan, why: why(plan) })),
    elapsedMs: Date.now() - started,
  };
}
