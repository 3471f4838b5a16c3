// One rank of the Qwen2.5-VL tensor-parallel test (tests/native/vl-parallel.test.ts), run as
//   node dist/tests/helpers/vl-parallel-rank.js '<config as JSON>'
// Joins the group, builds the mesh, loads the folder with it, runs the scenario (images in every
// call); rank 0 writes the result to `out` and every rank prints one JSON line {rank, ok, ...}.
import { readFileSync, writeFileSync } from "node:fs";
import {
  type ImageInputs,
  type Layout,
  Mesh,
  Model,
  type NamedHostTensor,
  type ProcessGroup,
} from "../../src/index.js";
import { glooGroup } from "./ranks.js";

export interface VlParallelRankConfig {
  port: number;
  rank: number;
  worldSize: number;
  timeoutMs: number;
  layout: Layout;
  modelDir: string;
  /** The case's reference.json (tests/python/vl_reference.py): tokens, images, prompts. */
  reference: string;
  out: string;
}

export interface VlScenarioResult {
  logprobs: number[];
  gradients: Record<string, number[]>;
  parameters: Record<string, number[]>;
  generated: number[][];
}

interface Batch {
  tokens: number[];
  cuSeqlens: number[];
  pixels: number[];
  grids: number[];
  prompts: number[][];
  promptPixels: number[];
  promptGrids: number[];
}

function byName(list: NamedHostTensor[]): Record<string, number[]> {
  return Object.fromEntries(list.map((t) => [t.name, Array.from(t.data as Float32Array)]));
}

/** Logprobs, one NLL step's gathered gradients, parameters after two AdamW updates, greedy tokens. */
export async function runVlScenario(model: Model, referenceFile: string): Promise<VlScenarioResult> {
  const b = JSON.parse(readFileSync(referenceFile, "utf8")) as Batch;
  const tokens = Int32Array.from(b.tokens);
  const cu = Int32Array.from(b.cuSeqlens);
  const images = (): ImageInputs => ({
    pixels: Float32Array.from(b.pixels),
    grids: Int32Array.from(b.grids),
  });
  const { logprobs } = await model.logprobs(tokens, cu, 1, 1024, undefined, images());
  // eps 1e-6: AdamW's step for a gradient near eps turns a float-noise difference into a visible one
  // (a 3e-8 entry of q_proj moved 1e-5 apart at eps 1e-8); the test is about the split, not that.
  model.initOptimizer({ lr: 1e-3, eps: 1e-6, weightDecay: 0.01, maxGradNorm: 1 });
  const mask = new Float32Array(tokens.length - (cu.length - 1)).fill(1);
  let gradients: Record<string, number[]> = {};
  for (let update = 0; update < 2; update++) {
    await model.trainStep(tokens, cu, mask, mask.length, 1, 1024, undefined, images());
    if (update === 0) gradients = byName(await model.gather("gradients"));
    await model.optimizerStep();
  }
  const parameters = byName(await model.gather("parameters"));
  const generations = await model.generate(
    b.prompts.map((p) => Int32Array.from(p)),
    {
      maxNewTokens: 8,
      images: { pixels: Float32Array.from(b.promptPixels), grids: Int32Array.from(b.promptGrids) },
    },
  );
  return {
    logprobs: Array.from(logprobs),
    gradients,
    parameters,
    generated: generations.map((g) => Array.from(g.tokens)),
  };
}

// Run as a rank only when executed directly (the test imports runVlScenario from here too).
if (process.argv[1]?.endsWith("vl-parallel-rank.js")) {
  const config = JSON.parse(process.argv[2] ?? "{}") as VlParallelRankConfig;
  let pg: ProcessGroup | undefined;
  let mesh: Mesh | undefined;
  let model: Model | undefined;
  try {
    pg = await glooGroup(config);
    mesh = await Mesh.create(pg, config.layout);
    model = await Model.load(config.modelDir, { mesh });
    const result = await runVlScenario(model, config.reference);
    if (config.rank === 0) writeFileSync(config.out, JSON.stringify(result));
    process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: true })}\n`);
  } catch (error) {
    const message = error instanceof Error ? `${error.message}\n${error.stack}` : String(error);
    process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: false, error: message })}\n`);
  } finally {
    model?.dispose();
    mesh?.dispose();
    pg?.dispose();
  }
}
