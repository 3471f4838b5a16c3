// One rank of bench/parallel.ts: `node dist/bench/parallel-rank.js '<config JSON>'`. Times
// training steps (policy loss over micro-batches, then the optimizer) of the model in the given
// layout and prints {rank, ok, stepSeconds, traffic} where traffic is one step's collectives.
import { type Layout, Mesh, Model, ProcessGroup } from "../src/index.js";

interface Config {
  port: number;
  rank: number;
  worldSize: number;
  layout: Layout;
  modelDir: string;
  vocab: number;
  sequences: number;
  length: number;
  steps: number;
}

const c = JSON.parse(process.argv[2] ?? "{}") as Config;
try {
  const pg = await ProcessGroup.create({
    port: c.port,
    rank: c.rank,
    worldSize: c.worldSize,
    backend: "gloo",
    timeoutMs: 60_000,
  });
  const mesh = await Mesh.create(pg, c.layout);
  const model = await Model.load(c.modelDir, { mesh });
  model.initOptimizer({ lr: 1e-4, maxGradNorm: 1 });
  const data = mesh.info.layout.data;
  const mine = Array.from({ length: c.sequences }, (_, i) => i).filter(
    (i) => i % data === mesh.coordinates.data,
  );
  const counts = { tokens: c.sequences * (c.length - 1), sequences: c.sequences };
  const step = async () => {
    for (const i of mine) {
      const tokens = Int32Array.from({ length: c.length }, (_, j) => 2 + ((i * 31 + j * 7) % (c.vocab - 2)));
      const n = c.length - 1;
      const ones = new Float32Array(n).fill(1);
      const old = (await model.logprobs(tokens, Int32Array.from([0, c.length]))).logprobs;
      await model.policyStep(
        tokens,
        Int32Array.from([0, c.length]),
        { oldLogprobs: old, advantages: ones, mask: ones },
        counts,
      );
    }
    await model.optimizerStep();
  };
  await step(); // warm-up
  mesh.traffic(true);
  const started = process.hrtime.bigint();
  for (let s = 0; s < c.steps; s++) await step();
  const stepSeconds = Number(process.hrtime.bigint() - started) / 1e9 / c.steps;
  const traffic = mesh.traffic(true);
  for (const kinds of Object.values(traffic)) {
    for (const t of Object.values(kinds)) {
      t.calls /= c.steps;
      t.bytes /= c.steps;
      t.seconds /= c.steps;
    }
  }
  process.stdout.write(`${JSON.stringify({ rank: c.rank, ok: true, stepSeconds, traffic })}\n`);
  model.dispose();
  mesh.dispose();
  pg.dispose();
} catch (error) {
  process.stdout.write(`${JSON.stringify({ rank: c.rank, ok: false, error: (error as Error).message })}\n`);
}
