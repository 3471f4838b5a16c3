// NCCL process groups over 2 GPUs (run by scripts/gpu/run.sh on a machine with at least 2): the same
// separate-process collectives as tests/native/dist.test.ts, each rank on its own GPU, with the
// same exact results; a missing peer fails the rendezvous within the timeout, naming it.
// NVLink multicast stays off (NCCL_NVLS_ENABLE=0; the engine also forces it).
import assert from "node:assert/strict";
import { test } from "node:test";
import { backendAvailable, engineInfo } from "../../src/index.js";
import { checkCollectives } from "../helpers/dist-expected.js";
import type { RankConfig } from "../helpers/dist-rank.js";
import { freePort, runRanks } from "../helpers/ranks.js";

const gpus = engineInfo().devices.filter((d) => d.device.startsWith("cuda:")).length;
const skip = !backendAvailable("nccl")
  ? "this build has no NCCL (built without CUDA)"
  : gpus < 2
    ? `needs 2 CUDA devices, found ${gpus}`
    : false;

const ncclEnv = { NCCL_NVLS_ENABLE: "0", TORCH_SYMM_MEM_DISABLE_MULTICAST: "1", NVSHMEM_DISABLE_NVLS: "1" };

function configs(port: number, timeoutMs: number, scenario: RankConfig["scenario"]): RankConfig[] {
  return [0, 1].map((rank) => ({
    port,
    rank,
    worldSize: 2,
    backend: "nccl" as const,
    device: `cuda:${rank}`,
    timeoutMs,
    scenario,
  }));
}

test("nccl, 2 processes on 2 GPUs: all-reduce sum/max/min/avg (float32, bfloat16, int64), broadcast from rank 1, all-gather, reduce-scatter, barrier", {
  skip,
  timeout: 180_000,
}, async () => {
  const results = await runRanks(configs(await freePort(), 60_000, "collectives"), 170_000, ncclEnv);
  checkCollectives(results, 2);
});

test("nccl, rank 1 never started: rank 0 fails the rendezvous within the timeout, naming rank 1", {
  skip,
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  const [first] = configs(port, 3_000, "join");
  assert.ok(first);
  const [result] = await runRanks([first], 50_000, ncclEnv);
  assert.equal(result?.ok, false);
  assert.match(
    result?.error ?? "",
    new RegExp(`rendezvous at 127\\.0\\.0\\.1:${port}: rank\\(s\\) 1 of worldSize 2`),
  );
});
