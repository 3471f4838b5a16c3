// One rank of a multi-process test (tests/native/dist.test.ts, tests/gpu/dist.test.ts), run as
//   node dist/tests/helpers/dist-rank.js '<RankConfig as JSON>'
// It joins the group, runs one scenario and prints a single JSON line on stdout: the collective
// results (numbers as JS numbers, int64 as decimal strings) or {error, elapsedMs}.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type HostTensor, ProcessGroup, type ReduceOp } from "../../src/index.js";

export interface RankConfig {
  port: number;
  rank: number;
  worldSize: number;
  backend: "gloo" | "nccl";
  timeoutMs: number;
  /** nccl: "cuda:N" */
  device?: string;
  /**
   * collectives: the whole set, results printed;
   * join: join only (a peer of `missing` / `stall` runs);
   * stall: join, then sleep past the timeout without calling any collective;
   * allReduceAfterJoin: join, then one all-reduce (its peer stalls).
   */
  scenario: "collectives" | "join" | "stall" | "allReduceAfterJoin";
}

/** The per-rank input of the collectives scenario: distinct on every rank, exact in every dtype. */
export function rankValues(rank: number): number[] {
  return [rank + 1, 1 - 2 * rank, 10 * (rank + 1), rank % 2 === 0 ? 3 : -5, 0.5 * rank, 7];
}

export function int64Values(rank: number): bigint[] {
  // Beyond 2^53, so a float round trip would lose them.
  return [
    BigInt(rank + 1) * 1_000_000_000_000_007n,
    -BigInt(rank),
    9_007_199_254_740_993n * BigInt(rank % 2),
  ];
}

export function bf16FromNumber(v: number): number {
  // Exact for the small integers and halves used here (their low 16 float32 bits are zero).
  return new Uint16Array(new Float32Array([v]).buffer)[1] ?? 0;
}

function numberFromBf16(bits: number): number {
  return new Float32Array(new Uint32Array([bits << 16]).buffer)[0] ?? Number.NaN;
}

function f32(values: number[], shape = [2, values.length / 2]): HostTensor {
  return { data: Float32Array.from(values), dtype: "float32", shape };
}

/** Values of any host tensor as JSON-safe numbers (int64 as strings, bf16 decoded). */
export function plain(t: HostTensor): { shape: number[]; dtype: string; values: (number | string)[] } {
  const values = Array.from(t.data as ArrayLike<number | bigint>, (v) =>
    typeof v === "bigint" ? v.toString() : t.dtype === "bfloat16" ? numberFromBf16(v) : v,
  );
  return { shape: t.shape, dtype: t.dtype, values };
}

async function collectives(pg: ProcessGroup): Promise<Record<string, unknown>> {
  const r = pg.rank;
  const out: Record<string, unknown> = {};
  for (const op of ["sum", "max", "min", "avg"] as ReduceOp[]) {
    out[`float32/${op}`] = plain(await pg.allReduce(f32(rankValues(r)), op));
  }
  const bf16 = {
    data: Uint16Array.from(rankValues(r), bf16FromNumber),
    dtype: "bfloat16" as const,
    shape: [6],
  };
  out["bfloat16/sum"] = plain(await pg.allReduce(bf16, "sum"));
  out["bfloat16/max"] = plain(await pg.allReduce(bf16, "max"));
  const i64 = { data: BigInt64Array.from(int64Values(r)), dtype: "int64" as const, shape: [3] };
  out["int64/sum"] = plain(await pg.allReduce(i64, "sum"));
  out["int64/max"] = plain(await pg.allReduce(i64, "max"));
  // Rank 1 holds the payload; the others pass zeros of the same shape.
  const root = pg.worldSize > 1 ? 1 : 0;
  const payload = r === root ? [42, -1, 3.25, 1e30] : [0, 0, 0, 0];
  out.broadcast = plain(await pg.broadcast(f32(payload), root));
  out.allGather = plain(await pg.allGather(f32([r, r + 0.5, -1 - r, 100 + r], [2, 2])));
  const rows = Array.from({ length: 2 * pg.worldSize }, (_, i) => i * 10 + r);
  out.reduceScatter = plain(await pg.reduceScatter(f32(rows, [pg.worldSize, 2]), "sum"));
  // Issued back to back without awaiting: they must still pair up across ranks in call order.
  const [a, b] = await Promise.all([
    pg.allReduce(f32([r, 1]), "sum"),
    pg.allReduce(f32([1, 2 * r], [2]), "max"),
  ]);
  out.ordered = [plain(a), plain(b)];
  const started = Date.now();
  await pg.barrier();
  out.barrierMs = Date.now() - started;
  return out;
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? "{}") as RankConfig;
  const started = Date.now();
  let pg: ProcessGroup | undefined;
  try {
    pg = await ProcessGroup.create({
      port: config.port,
      rank: config.rank,
      worldSize: config.worldSize,
      backend: config.backend,
      timeoutMs: config.timeoutMs,
      ...(config.device ? { device: config.device } : {}),
    });
    let result: Record<string, unknown> = {};
    if (config.scenario === "collectives") result = await collectives(pg);
    if (config.scenario === "stall") await new Promise((done) => setTimeout(done, 2 * config.timeoutMs));
    if (config.scenario === "allReduceAfterJoin") await pg.allReduce(f32([1, 2]), "sum");
    process.stdout.write(`${JSON.stringify({ rank: config.rank, ok: true, ...result })}\n`);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    process.stdout.write(
      `${JSON.stringify({ rank: config.rank, ok: false, error: message, elapsedMs: Date.now() - started })}\n`,
    );
  } finally {
    pg?.dispose();
  }
}

// Imported by the tests for its values; runs only as the rank's entry script.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
