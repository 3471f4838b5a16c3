// A multi-rank experiment through the controller: four CPU worker processes in one gloo process
// group, GRPO on the quickstart task at TP2×DP2 against the same run on one rank of the same
// controller; then the TP2×DP2 checkpoint resumed on one rank continues as the uninterrupted run;
// then a Qwen3-MoE with its experts over the four ranks (expert parallelism) against one rank, the
// same at TP2 × EP2 with routing replay, and DeepSeek-V3 at EP4.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { connect, type MetricsRow } from "../../src/index.js";
import type { ExperimentConfig } from "../../src/rl/config.js";
import { tokenizerFiles, writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { assertRowsClose, responses } from "../helpers/rows.js";
import { killAll, tiller } from "../helpers/runtime.js";
import { writeTinyMoe } from "../helpers/tiny-models.js";

const dir = tempDir("parallel-experiment");
let config: ExperimentConfig;
before(async () => {
  const model = join(dir.path, "model");
  // 16 embedding rows (the tokenizer's 15 ids and one spare) split over two tensor ranks.
  await writeTinyModel(model, { seed: 5, vocabSize: 16 });
  config = {
    name: "layout",
    runDir: join(dir.path, "one"),
    seed: 3,
    model: { path: model },
    data: { train: writeNextDigitData(join(dir.path, "data")), maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    // Several micro-batches per replica, so accumulation and balancing are exercised.
    tokensPerMicroBatch: 40,
    miniBatchesPerStep: 2,
    optimizer: { lr: 3e-3, maxGradNorm: 0.5 },
    totalSteps: 4,
  };
});
after(() => {
  killAll();
  dir.cleanup();
});

test("GRPO at TP2×DP2 on 4 workers gives one rank's rollouts and metrics rows; its checkpoint resumed on one rank continues the same run; trained at TP2×DP2 with rollouts at TP4 too; Qwen3-MoE at EP4, at TP2×EP2 with routing replay, and trained at EP4 with replayed rollouts at TP2×DP2, DeepSeek-V3 at EP4 too", {
  timeout: 600_000,
}, async () => {
  const address = `ipc://${dir.path}/c.sock`;
  // Relayed although the workers share the controller's host (the default relays only for remote
  // workers), every command however small: the relay path is what this proves.
  tiller(["controller", "--bind", address, "--cpu", "4"], {
    TILLER_RELAY: "on",
    TILLER_RELAY_MIN_BYTES: "0",
  });
  const cluster = await connect(address, { timeoutMs: 60_000 });
  try {
    await cluster.waitForWorkers(4, 60_000);
    // One rank of the same controller: the reference run, four steps.
    const one = await cluster.experiment(config);
    const t0 = (await cluster.status()).traffic;
    const oneRows = await one.run(1);
    const t1 = (await cluster.status()).traffic;
    oneRows.push(...(await one.run(3)));
    const oneTokens = await one.rollouts(3);
    await one.close();

    // A layout the workers do not have is refused before anything loads.
    await assert.rejects(
      cluster.experiment({ ...config, name: "eight", parallel: { tensor: 2, data: 4 } }),
      /parallel\.gpus: 8, but the controller has 4 workers/,
    );

    const split = await cluster.experiment({
      ...config,
      name: "split",
      runDir: join(dir.path, "split"),
      parallel: { tensor: 2, data: 2 },
      totalSteps: 3,
    });
    // cluster.status() shows each worker's place in the run's mesh.
    assert.deepEqual(
      (await cluster.status()).workers.map((w) => [w.rank, w.mesh?.describe, w.mesh?.coordinates.data]),
      [
        [0, "TP2 x DP2", 0],
        [1, "TP2 x DP2", 0],
        [2, "TP2 x DP2", 1],
        [3, "TP2 x DP2", 1],
      ],
    );
    // Every worker holds its slice of the actor under the run's mesh, at its own coordinates.
    const info = await cluster.run("worker.info", {});
    assert.deepEqual(
      info.map((r) => [
        r.rank,
        r.result.mesh?.describe,
        r.result.mesh?.coordinates.tensor,
        r.result.mesh?.coordinates.data,
      ]),
      [
        [0, "TP2 x DP2", 0, 0],
        [1, "TP2 x DP2", 1, 0],
        [2, "TP2 x DP2", 0, 1],
        [3, "TP2 x DP2", 1, 1],
      ],
    );
    const t2 = (await cluster.status()).traffic;
    const splitRows = await split.run(1);
    const t3 = (await cluster.status()).traffic;
    splitRows.push(...(await split.run(2)));
    assert.equal(splitRows.length, 3);
    // Each replica's data goes out once (relayed by its first rank over the replica's group) and
    // comes back from one rank: step 1's arrays are the one-rank step 1's, not twice them.
    const body = (a: typeof t0, b: typeof t0) => [
      b.commandBodyBytes - a.commandBodyBytes,
      b.replyBodyBytes - a.replyBodyBytes,
    ];
    const [oneOut, oneBack] = body(t0, t1) as [number, number];
    const [splitOut, splitBack] = body(t2, t3) as [number, number];
    assert.ok(
      Math.abs(splitOut - oneOut) <= 0.1 * oneOut,
      `TP2×DP2 sent ${splitOut} bytes of arrays, one rank ${oneOut}`,
    );
    assert.ok(
      Math.abs(splitBack - oneBack) <= 0.1 * oneBack,
      `TP2×DP2 collected ${splitBack}, one rank ${oneBack}`,
    );
    // The same responses (batch-invariant sampling over the replicas), the same metrics.
    const splitTokens = await split.rollouts(3);
    assert.deepEqual(responses(splitTokens), responses(oneTokens));
    splitRows.forEach((row, i) => {
      assertRowsClose(row, oneRows[i] as MetricsRow, `step ${i + 1}`);
    });
    await split.save();
    await split.close();

    // Saved at TP2×DP2, resumed on one rank: step 4 is the uninterrupted run's step 4.
    const resumed = await cluster.resume(join(dir.path, "split"), { totalSteps: 4, parallel: { gpus: 1 } });
    assert.equal(resumed.stepsDone, 3);
    const [row4] = await resumed.run(1);
    assertRowsClose(row4 as MetricsRow, oneRows[3] as MetricsRow, "resumed step 4");
    await resumed.close();

    // Trained at TP2×DP2, rolled out at TP4: the rollout's own shards, resharded at every sync.
    const wide = await cluster.experiment({
      ...config,
      name: "wide",
      runDir: join(dir.path, "wide"),
      parallel: { tensor: 2, data: 2 },
      rollout: { ...config.rollout, parallel: { tensor: 4 } },
      totalSteps: 3,
    });
    const wideRows = await wide.run(3);
    assert.deepEqual(
      responses(await wide.rollouts(3)),
      responses(oneTokens),
      "train TP2×DP2 / rollout TP4: step 3's responses",
    );
    for (const [i, row] of wideRows.entries()) {
      assertRowsClose(row, oneRows[i] as MetricsRow, `train TP2×DP2 / rollout TP4 step ${i + 1}`);
      assert.ok((row["perf/reshard_bytes"] as number) > 0, "the rollout's missing quarters moved");
    }
    console.log(
      `train TP2×DP2 -> rollout TP4: ${wideRows[0]?.["perf/reshard_bytes"]} B per sync over 4 ranks`,
    );
    await wide.close();

    // Qwen3-MoE with its 4 experts over the 4 ranks (one each; attention, router and embeddings
    // data-parallel): rollouts in lockstep, logprobs and updates with all-to-all dispatch.
    const moeModel = join(dir.path, "moe");
    await writeTinyModel(moeModel, { seed: 5, moe: { experts: 4, topK: 2 } });
    const moeConfig = {
      ...config,
      name: "moe",
      model: { path: moeModel },
      runDir: join(dir.path, "moe-one"),
      totalSteps: 2,
    };
    const oneMoe = await cluster.experiment(moeConfig);
    const oneMoeRows = await oneMoe.run(2);
    const oneMoeTokens = await oneMoe.rollouts(2);
    await oneMoe.close();
    const ep = await cluster.experiment({
      ...moeConfig,
      name: "moe-ep",
      runDir: join(dir.path, "moe-ep"),
      parallel: { expert: 4, data: 4 },
    });
    const epRows = await ep.run(2);
    assert.deepEqual(responses(await ep.rollouts(2)), responses(oneMoeTokens));
    epRows.forEach((row, i) => {
      assertRowsClose(row, oneMoeRows[i] as MetricsRow, `EP4 step ${i + 1}`);
      for (const key of ["router/load_imbalance/mean", "router/entropy/mean"]) {
        assert.ok(
          Math.abs((row[key] as number) - (oneMoeRows[i]?.[key] as number)) <= 1e-5,
          `EP4 step ${i + 1}: ${key}`,
        );
      }
    });
    await ep.close();

    // The Qwen3-235B shape scaled down: attention TP2 × DP2 with the experts over EP2 on the same
    // ranks (each tensor rank routes half the tokens), rollout routing recorded and replayed in
    // training: three steps equal one rank's, rollout and training probabilities agree.
    const moe16 = join(dir.path, "moe16");
    // 16 embedding rows: the vocabulary splits over the two tensor ranks.
    await writeTinyModel(moe16, { seed: 5, moe: { experts: 4, topK: 2 }, vocabSize: 16 });
    const replayConfig = {
      ...moeConfig,
      model: { path: moe16 },
      name: "moe-replay",
      runDir: join(dir.path, "moe-replay-one"),
      rollout: { ...config.rollout, routingReplay: "replay" as const },
      algorithm: { recomputeOldLogprobs: true },
      totalSteps: 3,
    };
    const oneReplay = await cluster.experiment(replayConfig);
    const oneReplayRows = await oneReplay.run(3);
    await oneReplay.close();
    const tpEp = await cluster.experiment({
      ...replayConfig,
      name: "moe-tp-ep",
      runDir: join(dir.path, "moe-tp-ep"),
      parallel: { tensor: 2, expert: 2, data: 2 },
    });
    const tpEpRows = await tpEp.run(3);
    await tpEp.close();
    assert.equal(tpEpRows.length, 3);
    tpEpRows.forEach((row, i) => {
      assertRowsClose(row, oneReplayRows[i] as MetricsRow, `TP2×EP2 replay step ${i + 1}`);
      assert.ok(
        (row["training/rollout_probs_diff_max"] as number) < 1e-5,
        `step ${i + 1}: rollout vs training`,
      );
    });

    // Trained at EP4, rolled out at TP2 × DP2 (the DeepSeek-V3 recipe's flow, scaled down): the
    // rollout's shards resharded from the expert ranks every sync, its recorded routing replayed.
    const epTp = await cluster.experiment({
      ...replayConfig,
      name: "moe-ep-tp",
      runDir: join(dir.path, "moe-ep-tp"),
      parallel: { expert: 4, data: 4 },
      rollout: { ...replayConfig.rollout, parallel: { tensor: 2, data: 2 } },
    });
    const epTpRows = await epTp.run(3);
    await epTp.close();
    epTpRows.forEach((row, i) => {
      assertRowsClose(
        row,
        oneReplayRows[i] as MetricsRow,
        `train EP4 / rollout TP2×DP2 replay step ${i + 1}`,
      );
      assert.ok((row["perf/reshard_bytes"] as number) > 0, "experts and attention slices moved");
      assert.ok(
        (row["training/rollout_probs_diff_max"] as number) < 1e-5,
        `step ${i + 1}: rollout (TP2×DP2) vs training (EP4)`,
      );
    });

    // DeepSeek-V3 (MLA, sigmoid group-limited routing, a shared expert, a dense first layer) with
    // the recipe's layout: attention data-parallel, experts over every rank (EP4).
    const dsModel = join(dir.path, "deepseek");
    await writeTinyMoe(dsModel, {
      family: "deepseek_v3",
      layers: 2,
      firstDense: 1,
      experts: 8,
      topK: 2,
      groups: 4,
      topGroups: 2,
      vocab: 16,
      seed: 13,
    });
    for (const [file, content] of Object.entries(tokenizerFiles())) {
      writeFileSync(join(dsModel, file), JSON.stringify(content));
    }
    const dsConfig = {
      ...config,
      name: "ds",
      model: { path: dsModel },
      runDir: join(dir.path, "ds-one"),
      totalSteps: 2,
    };
    const oneDs = await cluster.experiment(dsConfig);
    const oneDsRows = await oneDs.run(2);
    await oneDs.close();
    const dsEp = await cluster.experiment({
      ...dsConfig,
      name: "ds-ep",
      runDir: join(dir.path, "ds-ep"),
      parallel: { expert: 4, data: 4 },
    });
    const dsEpRows = await dsEp.run(2);
    await dsEp.close();
    assert.equal(dsEpRows.length, 2);
    dsEpRows.forEach((row, i) => {
      assertRowsClose(row, oneDsRows[i] as MetricsRow, `DeepSeek-V3 EP4 step ${i + 1}`);
    });
  } finally {
    await cluster.shutdown().catch(() => undefined);
    cluster.close();
  }
});
