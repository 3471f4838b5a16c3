// `tiller plan`: memory per rank, communication and step time of a model on a cluster, or with
// --search the layouts that fit, ranked. Flags map one to one onto PlanConfig (src/plan/config.ts);
// --config reads a PlanConfig from a JSON file and flags override it.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import {
  formatPlan,
  formatSearch,
  type PlanConfig,
  type PlanSearchError,
  plan,
  search,
} from "../plan/index.js";

const options = {
  config: { type: "string" },
  model: { type: "string" },
  recipe: { type: "string" },
  gpu: { type: "string" },
  gpus: { type: "string" },
  tp: { type: "string" },
  cp: { type: "string" },
  pp: { type: "string" },
  ep: { type: "string" },
  etp: { type: "string" },
  sp: { type: "boolean" },
  "first-stage-layers": { type: "string" },
  "last-stage-layers": { type: "string" },
  "rollout-tp": { type: "string" },
  "rollout-ep": { type: "boolean" },
  prompts: { type: "string" },
  samples: { type: "string" },
  "prompt-tokens": { type: "string" },
  "response-tokens": { type: "string" },
  "mean-response-tokens": { type: "string" },
  "micro-batch-tokens": { type: "string" },
  "mini-batches": { type: "string" },
  epochs: { type: "string" },
  dtype: { type: "string" },
  device: { type: "string" },
  offload: { type: "string" },
  recompute: { type: "string" },
  reference: { type: "boolean" },
  "no-old-logprobs": { type: "boolean" },
  search: { type: "boolean" },
  top: { type: "string" },
  json: { type: "boolean" },
} as const;

export const planHelp =
  "(--model DIR|config.json | --recipe NAME) --gpu H20-96GB|H100-80GB|H200-141GB|B200 [--gpus N] [--tp --cp --pp --ep --etp N --sp " +
  "--first-stage-layers --last-stage-layers N] [--rollout-tp N --rollout-ep] [--prompts --samples --prompt-tokens --response-tokens " +
  "--mean-response-tokens --micro-batch-tokens --mini-batches --epochs N] [--dtype] [--device cuda|cpu] [--offload none|all|parameters|optimizer] " +
  "[--recompute none|full] [--reference] [--no-old-logprobs] [--config plan.json] [--search [--top N]] [--json]";

function integer(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`--${flag}: ${JSON.stringify(value)} must be an integer ≥ 1`);
  return n;
}

/** Defined entries only (a flag not given leaves the config file's value). */
function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The PlanConfig the arguments describe. */
export function planConfigFromArgs(args: string[]): {
  config: PlanConfig;
  search: boolean;
  top: number;
  json: boolean;
} {
  const { values: v } = parseArgs({ args, options, allowPositionals: false });
  let base: Partial<PlanConfig> = {};
  if (v.config !== undefined) {
    try {
      base = JSON.parse(readFileSync(v.config, "utf8")) as Partial<PlanConfig>;
    } catch (error) {
      throw new Error(`--config: ${v.config}: ${(error as Error).message}`);
    }
  }
  let offload: PlanConfig["offload"];
  if (v.offload !== undefined) {
    const known: Record<string, PlanConfig["offload"]> = {
      none: "none",
      all: "all",
      parameters: { parameters: true },
      optimizer: { optimizer: true },
    };
    offload = known[v.offload];
    if (!offload)
      throw new Error(`--offload: ${JSON.stringify(v.offload)}; allowed: none, all, parameters, optimizer`);
  }
  const train = defined({
    tensor: integer(v.tp, "tp"),
    context: integer(v.cp, "cp"),
    pipeline: integer(v.pp, "pp"),
    expert: integer(v.ep, "ep"),
    expertTensor: integer(v.etp, "etp"),
    sequenceParallel: v.sp,
    firstStageLayers: integer(v["first-stage-layers"], "first-stage-layers"),
    lastStageLayers: integer(v["last-stage-layers"], "last-stage-layers"),
  });
  const rollout = defined({ tensor: integer(v["rollout-tp"], "rollout-tp"), expert: v["rollout-ep"] });
  const batch = defined({
    promptsPerStep: integer(v.prompts, "prompts"),
    samplesPerPrompt: integer(v.samples, "samples"),
    promptTokens: integer(v["prompt-tokens"], "prompt-tokens"),
    responseTokens: integer(v["response-tokens"], "response-tokens"),
    meanResponseTokens: integer(v["mean-response-tokens"], "mean-response-tokens"),
    tokensPerMicroBatch: integer(v["micro-batch-tokens"], "micro-batch-tokens"),
    miniBatchesPerStep: integer(v["mini-batches"], "mini-batches"),
    epochsPerStep: integer(v.epochs, "epochs"),
  });
  const config = {
    ...base,
    ...defined({
      model: v.model,
      recipe: v.recipe,
      gpu: v.gpu,
      gpus: integer(v.gpus, "gpus"),
      dtype: v.dtype as PlanConfig["dtype"],
      device: v.device as PlanConfig["device"],
      offload,
      recompute: v.recompute as PlanConfig["recompute"],
      reference: v.reference,
      oldLogprobs: v["no-old-logprobs"] ? false : undefined,
    }),
    ...(Object.keys(train).length ? { train: { ...base.train, ...train } } : {}),
    ...(Object.keys(rollout).length ? { rollout: { ...base.rollout, ...rollout } } : {}),
    ...(Object.keys(batch).length ? { batch: { ...base.batch, ...batch } } : {}),
  } as PlanConfig;
  return { config, search: v.search ?? false, top: integer(v.top, "top") ?? 5, json: v.json ?? false };
}

export async function planCommand(args: string[]): Promise<void> {
  const { config, search: searching, top, json } = planConfigFromArgs(args);
  if (searching) {
    let result: ReturnType<typeof search>;
    try {
      result = search(config, { top });
    } catch (error) {
      const e = error as PlanSearchError;
      if (e.name === "PlanSearchError") throw new Error(`plan --search: ${e.message}`);
      throw error;
    }
    console.log(json ? JSON.stringify(result, null, 2) : formatSearch(result));
    return;
  }
  const p = plan(config);
  console.log(json ? JSON.stringify(p, null, 2) : formatPlan(p));
}
