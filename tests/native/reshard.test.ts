// Resharding between a training layout and a different rollout layout over the same 4 CPU ranks
// (gloo, fp32): the rollout model starts from other weights; after reshardFrom every rollout slice
// equals the corresponding slice of the trained weights exactly (gathered: the single-device
// tensors), greedy generation equals the single-device model's, each rank received only what its
// training slices lacked (in buckets), and matching layouts move nothing between ranks.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { type Layout, Model, type ReshardStats } from "../../src/index.js";
import { plan } from "../../src/plan/index.js";
import { tempDir } from "../helpers/python.js";
import { freePort, runRanks } from "../helpers/ranks.js";
import type { ReshardRankConfig } from "../helpers/reshard-rank.js";
import { writeTinyDense, writeTinyMoe } from "../helpers/tiny-models.js";

const prompts = [
  [3, 5, 7, 2],
  [4, 4, 9],
];

interface Case {
  label: string;
  train: Layout;
  rollout: Layout;
  moe?: boolean;
  /** Some rank must receive bytes (false: the layouts match, nothing moves). */
  moves: boolean;
  /** Received regions checked against their senders' checksums. */
  verify?: boolean;
}

const cases: Case[] = [
  {
    label: "train TP2 x DP2 -> rollout TP4",
    train: { tensor: 2, data: 2 },
    rollout: { tensor: 4 },
    moves: true,
  },
  {
    label: "train PP2 x TP2 -> rollout TP2 x DP2",
    train: { pipeline: 2, tensor: 2 },
    rollout: { tensor: 2, data: 2 },
    moves: true,
    verify: true,
  },
  {
    label: "train EP4 (Qwen3-MoE) -> rollout TP2 x DP2",
    train: { expert: 4, data: 4 },
    rollout: { tensor: 2, data: 2 },
    moe: true,
    moves: true,
  },
  {
    label: "matching layouts TP2 x DP2 -> TP2 x DP2",
    train: { tensor: 2, data: 2 },
    rollout: { tensor: 2, data: 2 },
    moves: false,
  },
];

for (const c of cases) {
  test(`${c.label}: every rollout shard is the trained slice exactly, greedy tokens are one device's, only missing regions move${c.verify ? ", every received region passes its sender's checksum" : ""}`, {
    timeout: 180_000,
  }, async () => {
    const dir = tempDir("reshard");
    try {
      const trainDir = join(dir.path, "train");
      const rolloutDir = join(dir.path, "rollout");
      const write = (d: string, seed: number) =>
        c.moe
          ? writeTinyMoe(d, {
              family: "qwen3_moe",
              layers: 2,
              experts: 4,
              topK: 2,
              heads: 4,
              kvHeads: 2,
              seed,
            })
          : writeTinyDense(d, { family: "qwen3", heads: 4, kvHeads: 2, layers: 4, seed });
      await write(trainDir, 61);
      await write(rolloutDir, 62); // other weights: anything not resharded shows
      const port = await freePort();
      const out = join(dir.path, "out.json");
      const configs: ReshardRankConfig[] = Array.from({ length: 4 }, (_, rank) => ({
        port,
        rank,
        worldSize: 4,
        train: c.train,
        rollout: c.rollout,
        trainDir,
        rolloutDir,
        prompts,
        bucketBytes: 16_384, // several buckets for these tiny tensors
        ...(c.verify ? { verify: true } : {}),
        out,
      }));
      const ranks = await runRanks(configs, 150_000, {}, "reshard-rank.js");
      for (const r of ranks) assert.equal(r.ok, true, `rank ${r.rank}: ${r.error}`);
      const got = JSON.parse(readFileSync(out, "utf8")) as {
        parameters: Record<string, number[]>;
        generated: number[][];
      };
      const single = await Model.load(trainDir);
      try {
        for (const t of single.parameters()) {
          assert.deepEqual(
            got.parameters[t.name],
            Array.from(t.data as Float32Array),
            `${c.label}: ${t.name}`,
          );
        }
        const want = await single.generate(
          prompts.map((p) => Int32Array.from(p)),
          { maxNewTokens: 6 },
        );
        assert.deepEqual(
          got.generated,
          want.map((g) => Array.from(g.tokens)),
          `${c.label}: greedy tokens`,
        );
      } finally {
        single.dispose();
      }
      const stats = ranks.map((r) => r.stats as ReshardStats);
      const sent = stats.reduce((n, s) => n + s.bytesSent, 0);
      const received = stats.reduce((n, s) => n + s.bytesReceived, 0);
      assert.equal(sent, received, "every byte sent is received");
      for (const [r, s] of stats.entries()) {
        if (c.verify)
          assert.equal(s.verified > 0, s.bytesReceived > 0, `rank ${r}: a checksum per received region`);
        else assert.equal(s.verified, 0, `rank ${r}: nothing checked without verify`);
      }
      if (c.moves) {
        assert.ok(received > 0, "some rank lacked regions");
        assert.ok(
          stats.every((s) => s.buckets > 1),
          "tensors move a bucket at a time",
        );
      } else {
        assert.equal(received, 0, "matching layouts move nothing between ranks");
      }
      // The planner's minimum (the busiest rank's missing bytes) is what the busiest rank received
      // (dense models: the planner splits a rollout's experts over its tensor ranks, the engine keeps them whole).
      if (!c.moe) {
        const p = plan({
          model: trainDir,
          gpu: "H100-80GB",
          gpus: 4,
          train: { tensor: c.train.tensor ?? 1, pipeline: c.train.pipeline ?? 1 },
          rollout: { tensor: c.rollout.tensor ?? 1 },
          dtype: "float32",
          batch: { promptsPerStep: 4, samplesPerPrompt: 1, promptTokens: 5, responseTokens: 7 },
        });
        const planned = p.rollout.traffic.find((t) => t.group === "reshard")?.payloadBytes ?? 0;
        assert.equal(Math.max(...stats.map((s) => s.bytesReceived)), planned, "the planner's reshard bytes");
      }
      console.log(
        `${c.label}: received per rank ${stats.map((s) => s.bytesReceived).join(" / ")} B, copied in place ${stats.map((s) => s.bytesCopied).join(" / ")} B, ${stats[0]?.buckets} buckets${c.verify ? `, regions verified ${stats.map((s) => s.verified).join(" / ")}` : ""}`,
      );
    } finally {
      dir.cleanup();
    }
  });
}
