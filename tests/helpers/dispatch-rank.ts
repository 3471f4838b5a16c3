// One rank of the token dispatcher's test (tests/native/expert-dispatch.test.ts), run as
//   node dist/tests/helpers/dispatch-rank.js '<DispatchRankConfig as JSON>'
// Joins the gloo group, routes its own tokens (rank r: 3r tokens, so rank 0 sends none but still
// hosts experts) to the group's experts through ProcessGroup.expertDispatch, and prints one JSON
// line with the inputs, the outputs and the gradients for the test to check.
import { mulberry32 } from "../../src/rl/data.js";
import { glooGroup } from "./ranks.js";

export interface DispatchRankConfig {
  port: number;
  rank: number;
  worldSize: number;
  experts: number;
  topK: number;
  hidden: number;
}

const config = JSON.parse(process.argv[2] ?? "{}") as DispatchRankConfig;
const started = Date.now();
try {
  const pg = await glooGroup(config);
  const { experts, topK, hidden } = config;
  const tokens = 3 * config.rank;
  const random = mulberry32(17 + config.rank);
  const x = Float32Array.from({ length: tokens * hidden }, () => 2 * random() - 1);
  const upstream = Float32Array.from({ length: tokens * hidden }, () => 2 * random() - 1);
  // topK distinct experts per token; expert `experts - 1` is never chosen (an expert with no rows).
  const ids = new Int32Array(tokens * topK);
  for (let t = 0; t < tokens; t++) {
    const pool = Array.from({ length: experts - 1 }, (_, e) => e);
    for (let k = 0; k < topK; k++) {
      const [pick] = pool.splice(Math.floor(random() * pool.length), 1);
      ids[t * topK + k] = pick as number;
    }
  }
  const equal = new Float32Array(tokens * topK).fill(1 / topK);
  const weights = Float32Array.from({ length: tokens * topK }, () => random());
  const shapeX = [tokens, hidden];
  const shapeK = [tokens, topK];
  const tensor = (data: Float32Array | Int32Array, shape: number[]) => ({
    data,
    dtype: data instanceof Int32Array ? ("int32" as const) : ("float32" as const),
    shape,
  });
  const plain = await pg.expertDispatch(
    tensor(x, shapeX),
    tensor(ids, shapeK),
    tensor(equal, shapeK),
    experts,
    tensor(upstream, shapeX),
  );
  const scaled = await pg.expertDispatch(
    tensor(x, shapeX),
    tensor(ids, shapeK),
    tensor(weights, shapeK),
    experts,
    tensor(upstream, shapeX),
    true,
  );
  pg.dispose();
  const list = (t: { data: unknown }) => Array.from(t.data as Float32Array);
  process.stdout.write(
    `${JSON.stringify({
      rank: config.rank,
      ok: true,
      x: Array.from(x),
      upstream: Array.from(upstream),
      ids: Array.from(ids),
      weights: Array.from(weights),
      plain: { output: list(plain.output), grad: list(plain.grad) },
      scaled: { output: list(scaled.output), grad: list(scaled.grad) },
    })}\n`,
  );
} catch (error) {
  const message = error instanceof Error ? `${error.message}\n${error.stack}` : String(error);
  process.stdout.write(
    `${JSON.stringify({ rank: config.rank, ok: false, error: message, elapsedMs: Date.now() - started })}\n`,
  );
}
