// One rank of the resharding test (tests/native/reshard.test.ts), run as
//   node dist/tests/helpers/reshard-rank.js '<ReshardRankConfig as JSON>'
// Builds a training mesh and a rollout mesh over the same ranks, loads the training folder under
// the first and a different folder under the second, reshards the training weights into the
// rollout model, then gathers the rollout model's parameters and greedily generates with it; the
// rollout layout's first rank writes them to `out`, and every rank prints what it moved.
import { writeFileSync } from "node:fs";
import { type Layout, Mesh, Model } from "../../src/index.js";
import { glooGroup } from "./ranks.js";

export interface ReshardRankConfig {
  port: number;
  rank: number;
  worldSize: number;
  train: Layout;
  rollout: Layout;
  trainDir: string;
  rolloutDir: string;
  prompts: number[][];
  bucketBytes: number;
  /** Check every received region against its sender's checksum. */
  verify?: boolean;
  out: string;
}

const config = JSON.parse(process.argv[2] ?? "{}") as ReshardRankConfig;
const opened: { dispose(): void }[] = [];
try {
  const pg = await glooGroup(config);
  opened.push(pg);
  const trainMesh = await Mesh.create(pg, config.train);
  const rolloutMesh = await Mesh.create(pg, config.rollout);
  opened.push(trainMesh, rolloutMesh);
  const train = await Model.load(config.trainDir, { mesh: trainMesh });
  const rollout = await Model.load(config.rolloutDir, { mesh: rolloutMesh });
  opened.push(train, rollout);
  const stats = await rollout.reshardFrom(train, {
    bucketBytes: config.bucketBytes,
    verify: config.verify === true,
  });
  const parameters = await rollout.gather("parameters");
  const generated = await rollout.generate(
    config.prompts.map((p) => Int32Array.from(p)),
    { maxNewTokens: 6 },
  );
  if (config.rank === 0) {
    writeFileSync(
      config.out,
      JSON.stringify({
        parameters: Object.fromEntries(parameters.map((t) => [t.name, Array.from(t.data as Float32Array)])),
        generated: generated.map((g) => Array.from(g.tokens)),
      }),
    );
  }
  process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: true, stats })}\n`);
} catch (error) {
  const message = error instanceof Error ? `${error.message}\n${error.stack}` : String(error);
  process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: false, error: message })}\n`);
} finally {
  for (const o of opened.reverse()) o.dispose();
}
