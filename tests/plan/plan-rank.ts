// One rank of the planned-vs-measured memory test (tests/plan/measured.test.ts), run as
//   node dist/tests/plan/plan-rank.js '<PlanRankConfig as JSON>'
// Loads its slices of the model, counts the bytes of its parameters and of its gradients after one
// training micro-batch, measures the activation peak of a second, larger micro-batch (the CPU
// allocator's peak above what the rank held before it, less the gradients it made, as the worker
// reports perf/memory/activations_peak_bytes), and reads from the mesh's byte counters what one
// ZeRO-1 optimizer step reduce-scattered and all-gathered on the data and expert-data groups;
// prints one JSON line.
import { type Layout, Mesh, Model, ProcessGroup } from "../../src/index.js";

export interface PlanRankConfig {
  port: number;
  rank: number;
  worldSize: number;
  layout: Layout;
  modelDir: string;
  /** Token ids below this. */
  vocab: number;
  /** The measured micro-batch: `sequences` sequences of `length` tokens on every rank. */
  activations: { sequences: number; length: number };
  /** MoE: experts and topK; the measured micro-batch then replays an even routing. */
  moe?: { experts: number; topK: number; layers: number };
}

export interface MeasuredRank {
  rank: number;
  ok: boolean;
  error?: string;
  /** Bytes of this rank's parameter slices by kind (the test's own classification by HF name). */
  parameters: Record<"embedding" | "dense" | "expert" | "vision", number>;
  gradients: number;
  /** The measured micro-batch's allocator peak above its start, less the gradients it made. */
  activationsPeak: number;
  /** This rank's pipeline stage. */
  stage: number;
  /** What one optimizer step moved on each group (mesh.traffic(), groups of one rank absent). */
  zero: Record<string, Record<string, { calls: number; bytes: number }>>;
}

const kindOf = (name: string) =>
  name.startsWith("visual.")
    ? "vision"
    : name.includes(".mlp.experts.")
      ? "expert"
      : name.includes("embed_tokens") || name.startsWith("lm_head")
        ? "embedding"
        : "dense";

const config = JSON.parse(process.argv[2] ?? "{}") as PlanRankConfig;
let pg: ProcessGroup | undefined;
let mesh: Mesh | undefined;
let model: Model | undefined;
try {
  pg = await ProcessGroup.create({
    port: config.port,
    rank: config.rank,
    worldSize: config.worldSize,
    backend: "gloo",
    timeoutMs: 20_000,
  });
  mesh = await Mesh.create(pg, config.layout);
  model = await Model.load(config.modelDir, { mesh });
  const parameters = { embedding: 0, dense: 0, expert: 0, vision: 0 };
  for (const t of model.parameters()) parameters[kindOf(t.name)] += t.data.byteLength;
  model.initOptimizer({ lr: 1e-3, weightDecay: 0.01 });
  // One micro-batch of two sequences on every rank (the expert dispatch is collective).
  const tokens = Int32Array.from({ length: 12 }, (_, i) => (i * 7 + config.rank) % config.vocab);
  const cu = Int32Array.from([0, 5, 12]);
  const mask = new Float32Array(tokens.length - 2).fill(1);
  await model.trainStep(tokens, cu, mask, mask.length * config.worldSize);
  const gradients = model.gradients().reduce((n, t) => n + t.data.byteLength, 0);
  // The measured micro-batch: sequences of one length (the plan sizes a micro-batch by its
  // longest), different on every rank; a MoE model replays an even routing (token i to experts
  // i, i + 1, … mod experts), so each expert rank gets its share of the rows, as the plan assumes.
  const { sequences, length } = config.activations;
  const big = Int32Array.from(
    { length: sequences * length },
    (_, i) => (i * 31 + config.rank * 5 + 3) % config.vocab,
  );
  const bigCu = Int32Array.from({ length: sequences + 1 }, (_, i) => i * length);
  const bigMask = new Float32Array(big.length - sequences).fill(1);
  const moe = config.moe;
  const routed = moe
    ? Int32Array.from({ length: big.length * moe.layers * moe.topK }, (_, i) => {
        const token = Math.floor(i / (moe.layers * moe.topK));
        return (token + (i % moe.topK)) % moe.experts;
      })
    : undefined;
  const before = model.memory();
  await model.trainStep(big, bigCu, bigMask, bigMask.length * config.worldSize, 1, 1024, routed);
  const after = model.memory();
  if (!after.device || !before.device) throw new Error("model.memory(): no allocator figures on this build");
  const activationsPeak = after.device.peak - before.device.allocated - (after.gradients - before.gradients);
  mesh.traffic(true);
  await model.optimizerStep();
  const traffic = mesh.traffic(true);
  const zero = Object.fromEntries(
    Object.entries(traffic).filter(([group]) => group === "data_context" || group === "expert_data"),
  );
  process.stdout.write(
    `${JSON.stringify({ rank: config.rank, ok: true, parameters, gradients, activationsPeak, stage: mesh.coordinates.pipeline, zero })}\n`,
  );
} catch (error) {
  const message = error instanceof Error ? `${error.message}\n${error.stack}` : String(error);
  process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: false, error: message })}\n`);
} finally {
  model?.dispose();
  mesh?.dispose();
  pg?.dispose();
}
