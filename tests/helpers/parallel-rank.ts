// One rank of a multi-rank model test (tests/native/parallel.test.ts), run as
//   node dist/tests/helpers/parallel-rank.js '<ParallelRankConfig as JSON>'
// Joins the group, builds the mesh, loads the folder with it, runs the scenario; rank 0 writes
// the result to `out` (large arrays) and every rank prints one JSON line {rank, ok, ...}.
import { writeFileSync } from "node:fs";
import { type Layout, Mesh, Model, type ProcessGroup } from "../../src/index.js";
import { runScenario } from "./parallel-scenario.js";
import { glooGroup } from "./ranks.js";

export interface ParallelRankConfig {
  port: number;
  rank: number;
  worldSize: number;
  timeoutMs: number;
  layout: Layout;
  modelDir: string;
  vocab: number;
  out: string;
  /** Also save the model and optimizer here (rank 0 writes). */
  saveDir?: string;
  /** Fault injection: this rank exits right after loading, before the first collective forward. */
  exitAfterLoad?: boolean;
  /** Passed to runScenario (expert parallelism: micro-batches a multiple of the data ranks, no generation). */
  scenario?: import("./parallel-scenario.js").ScenarioOptions;
  /**
   * After the scenario, the ranks of data replica d greedily generate prompts[0..d) of `prompts` for
   * 3 + 2d tokens and report them (expert parallelism: ranks with different work, one with none, in
   * lockstep).
   */
  unevenGenerate?: number[][];
  /** Activation recomputation for the training forwards (Model.setTraining). */
  recompute?: import("../../src/index.js").RecomputeOptions;
  /** Instead of the scenario: load this folder (and its optimizer.safetensors) and write the gathered state to `out`. */
  loadOnly?: boolean;
}

const config = JSON.parse(process.argv[2] ?? "{}") as ParallelRankConfig;
const started = Date.now();
let pg: ProcessGroup | undefined;
let mesh: Mesh | undefined;
let model: Model | undefined;
try {
  pg = await glooGroup(config);
  mesh = await Mesh.create(pg, config.layout);
  model = await Model.load(config.modelDir, { mesh });
  if (config.recompute) model.setTraining({ recompute: config.recompute });
  if (config.exitAfterLoad) {
    process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: true, exited: true })}\n`);
    process.exit(3);
  }
  const c = mesh.coordinates;
  if (config.loadOnly) {
    model.initOptimizer({ lr: 1e-3, weightDecay: 0.01, maxGradNorm: 0.5 });
    await model.loadOptimizer(`${config.modelDir}/optimizer.safetensors`);
    const parameters = await model.gather("parameters");
    await model.saveOptimizer(`${config.out}.optimizer.safetensors`);
    if (config.rank === 0) {
      writeFileSync(
        config.out,
        JSON.stringify(
          Object.fromEntries(parameters.map((t) => [t.name, Array.from(t.data as Float32Array)])),
        ),
      );
    }
    process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: true })}\n`);
    process.exit(0);
  }
  const result = await runScenario(model, config.vocab, c.data, mesh.info.layout.data, config.scenario);
  if (config.saveDir) {
    await model.save(config.saveDir);
    await model.saveOptimizer(`${config.saveDir}/optimizer.safetensors`);
  }
  let generated: number[][] | undefined;
  if (config.unevenGenerate) {
    // One replica's tensor ranks generate the same prompts: the replica's data index picks them.
    const prompts = config.unevenGenerate.slice(0, c.data).map((p) => Int32Array.from(p));
    const out = await model.generate(prompts, { maxNewTokens: 3 + 2 * c.data });
    generated = out.map((g) => Array.from(g.tokens));
  }
  // The last pipeline stage has the logprobs and the loss (the one stage without a pipeline).
  const lastStage = c.pipeline === mesh.info.layout.pipeline - 1;
  // Context ranks compute the same loss (on the gathered logprobs): one of them reports it.
  const leader = c.tensor === 0 && c.context === 0 && lastStage;
  if (leader && c.data === 0) writeFileSync(config.out, JSON.stringify(result));
  // Each data rank's share of the policy-loss metric (the test sums them).
  const pgLoss = leader ? result.pgLoss : [];
  process.stdout.write(
    `${JSON.stringify({ rank: config.rank, ok: true, coordinates: c, describe: mesh.info.describe, pgLoss, generated, traffic: mesh.traffic() })}\n`,
  );
} catch (error) {
  const message = error instanceof Error ? `${error.message}\n${error.stack}` : String(error);
  process.stdout.write(
    `${JSON.stringify({ rank: config.rank, ok: false, error: message, elapsedMs: Date.now() - started })}\n`,
  );
} finally {
  model?.dispose();
  mesh?.dispose();
  pg?.dispose();
}
