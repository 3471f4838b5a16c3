// A pipeline-parallel experiment through the controller: two CPU worker processes in one gloo
// process group, GRPO on the quickstart task with the decoder split over two stages (rollouts
// through both stages with the last sampling, old logprobs from the last stage, the update 1F1B
// over several micro-batches), against the same run on one rank; the PP2 checkpoint resumed on
// one rank continues the same run. Then the same at CP2 (each sequence cut into 4 chunks over
// the two ranks, K/V gathered for attention); then offload and recomputation on one rank.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, test } from "node:test";
import { connect, type MetricsRow } from "../../src/index.js";
import { plan } from "../../src/plan/index.js";
import type { ExperimentConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { assertRowsClose, responses } from "../helpers/rows.js";
import { killAll, tiller } from "../helpers/runtime.js";

const dir = tempDir("pipeline-experiment");
after(() => {
  killAll();
  dir.cleanup();
});

test("GRPO at PP2 on 2 workers gives one rank's rollouts and metrics rows for 3 steps, and its checkpoint resumed on one rank continues the same run; GRPO at CP2 gives them too, and trained at PP2 with rollouts at TP2 (resharded, verified, every sync; the actor's parameters offloaded meanwhile); offload and recompute on one rank change no metric; the controller plans for its two ranks", {
  timeout: 400_000,
}, async () => {
  const model = join(dir.path, "model");
  await writeTinyModel(model, { seed: 5, layers: 4, vocabSize: 16 }); // 16: splits over 2 tensor ranks
  const config: ExperimentConfig = {
    name: "stages",
    runDir: join(dir.path, "one"),
    seed: 3,
    model: { path: model },
    data: { train: writeNextDigitData(join(dir.path, "data")), maxPromptTokens: 8 },
    promptsPerStep: 8,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    // Several micro-batches per update, so the 1F1B schedule has some in flight.
    tokensPerMicroBatch: 40,
    miniBatchesPerStep: 2,
    optimizer: { lr: 3e-3, maxGradNorm: 0.5 },
    totalSteps: 4,
  };
  const address = `ipc://${dir.path}/c.sock`;
  tiller(["controller", "--bind", address, "--cpu", "2"]);
  const cluster = await connect(address, { timeoutMs: 60_000 });
  try {
    await cluster.waitForWorkers(2, 60_000);
    // The planner through the controller: this cluster's two ranks, the CPU kernels' activation
    // model (CPU workers); they name no GPU type.
    const planned = {
      model,
      gpu: "H100-80GB",
      train: { pipeline: 2 },
      dtype: "float32" as const,
      batch: { promptsPerStep: 8, samplesPerPrompt: 4, promptTokens: 8, responseTokens: 3 },
    };
    assert.deepEqual(
      await cluster.plan(planned),
      JSON.parse(JSON.stringify(plan({ ...planned, gpus: 2, device: "cpu" }))),
    );
    await assert.rejects(
      cluster.plan({ ...planned, gpu: undefined as never }),
      /config\.gpu: the workers report no GPU/,
    );
    await assert.rejects(cluster.plan({ ...planned, train: { pipeline: 3 } }), /config\.train\.pipeline/);
    const one = await cluster.experiment(config);
    const oneRows = await one.run(4);
    const oneTokens = await one.rollouts(3);
    await one.close();

    // What the engine does not run is refused before anything loads, naming the field.
    await assert.rejects(
      cluster.experiment({ ...config, name: "etp", parallel: { data: 2, expertTensor: 2 } }),
      /parallel\.expertTensor: 2: expert tensor parallelism is not in the engine/,
    );
    await assert.rejects(
      cluster.experiment({ ...config, name: "vpp", parallel: { pipeline: 2, virtualPipeline: 2 } }),
      /parallel\.virtualPipeline: 2: the engine runs one stage per pipeline rank/,
    );
    const staged = await cluster.experiment({
      ...config,
      name: "pp2",
      runDir: join(dir.path, "pp2"),
      parallel: { pipeline: 2 },
      totalSteps: 3,
    });
    assert.deepEqual(
      (await cluster.status()).workers.map((w) => [w.rank, w.mesh?.describe, w.mesh?.coordinates.pipeline]),
      [
        [0, "PP2", 0],
        [1, "PP2", 1],
      ],
    );
    const rows = await staged.run(3);
    assert.deepEqual(responses(await staged.rollouts(3)), responses(oneTokens), "step 3's responses");
    for (const [i, row] of rows.entries()) assertRowsClose(row, oneRows[i] as MetricsRow, `step ${i + 1}`);
    await staged.save();
    await staged.close();

    const resumed = await cluster.resume(join(dir.path, "pp2"), { totalSteps: 4, parallel: { gpus: 1 } });
    assert.equal(resumed.stepsDone, 3);
    const [row4] = await resumed.run(1);
    assertRowsClose(row4 as MetricsRow, oneRows[3] as MetricsRow, "resumed step 4");
    await resumed.close();

    const context = await cluster.experiment({
      ...config,
      name: "cp2",
      runDir: join(dir.path, "cp2"),
      parallel: { context: 2 },
      totalSteps: 3,
    });
    const cpRows = await context.run(3);
    assert.deepEqual(responses(await context.rollouts(3)), responses(oneTokens), "CP2: step 3's responses");
    for (const [i, row] of cpRows.entries())
      assertRowsClose(row, oneRows[i] as MetricsRow, `CP2 step ${i + 1}`);
    await context.close();

    // Trained at PP2, rolled out at TP2: the rollout holds its own shards, resharded at every sync.
    const split = await cluster.experiment({
      ...config,
      name: "pp2-tp2",
      runDir: join(dir.path, "pp2-tp2"),
      parallel: { pipeline: 2 },
      rollout: { ...config.rollout, parallel: { tensor: 2 }, reshard: { bucketBytes: 8192, verify: true } },
      // The actor's parameters wait on the host while the rollout's copy generates.
      offload: { params: true },
      totalSteps: 3,
    });
    const splitRows = await split.run(3);
    // The status shows both layouts, and every model's bytes as the last step read them.
    const workers = (await cluster.status()).workers;
    assert.deepEqual(
      workers.map((w) => [w.mesh?.describe, w.rolloutMesh?.describe, w.rolloutMesh?.coordinates.tensor]),
      [
        ["PP2", "TP2", 0],
        ["PP2", "TP2", 1],
      ],
    );
    for (const w of workers) {
      const held = Object.entries(w.modelMemory ?? {});
      assert.equal(held.length, 2, `rank ${w.rank}: the actor and the rollout copy`);
      for (const [name, m] of held) assert.ok(m.bytes.parameters > 0, `rank ${w.rank}: ${name}`);
    }
    assert.deepEqual(
      responses(await split.rollouts(3)),
      responses(oneTokens),
      "train PP2 / rollout TP2: step 3's responses",
    );
    for (const [i, row] of splitRows.entries()) {
      assertRowsClose(row, oneRows[i] as MetricsRow, `train PP2 / rollout TP2 step ${i + 1}`);
      assert.ok((row["perf/reshard_bytes"] as number) > 0, "the rollout's missing regions moved");
      assert.equal(
        row["perf/reshard_bytes"],
        splitRows[0]?.["perf/reshard_bytes"],
        "the same bytes every step",
      );
      assert.ok((row["timing_s/reshard"] as number) > 0 && (row["perf/reshard_gbps"] as number) > 0);
      assert.ok((row["perf/reshard_verified_regions"] as number) > 0, "received regions checked");
      assert.ok((row["perf/memory/rollout_parameters_bytes"] as number) > 0, "the rollout's own copy");
      assert.ok(
        (row["perf/offload_params_bytes"] as number) > 0,
        "the actor's parameters left for the rollout",
      );
      assert.equal(
        row["perf/onload_params_bytes"],
        row["perf/offload_params_bytes"],
        "and came back for old logprobs",
      );
    }
    console.log(
      `train PP2 -> rollout TP2: ${splitRows[0]?.["perf/reshard_bytes"]} B per sync over both ranks, ${Number(splitRows[0]?.["timing_s/reshard"]).toFixed(4)} s, ${splitRows[0]?.["perf/reshard_verified_regions"]} regions verified`,
    );
    assert.equal(oneRows[0]?.["perf/reshard_bytes"], undefined, "one layout: nothing resharded, no metric");
    // Measured on CPU from the engine's count of live tensors: the update's activation peak, the
    // process's allocator peak, the rollout's KV cache.
    for (const [i, row] of oneRows.entries()) {
      assert.ok((row["perf/memory/activations_peak_bytes"] as number) > 0, `step ${i + 1}: activation peak`);
      assert.ok((row["perf/memory/kv_cache_bytes"] as number) > 0, `step ${i + 1}: KV cache`);
      assert.ok(
        (row["perf/max_memory_allocated_gb"] as number) * 2 ** 30 >=
          (row["perf/memory/parameters_bytes"] as number) +
            (row["perf/memory/activations_peak_bytes"] as number),
        `step ${i + 1}: the allocator's peak holds the parameters and the activations`,
      );
    }
    const r1 = oneRows[0] as MetricsRow;
    console.log(
      `one rank, step 1: parameters ${r1["perf/memory/parameters_bytes"]} B, activation peak ${r1["perf/memory/activations_peak_bytes"]} B, KV cache ${r1["perf/memory/kv_cache_bytes"]} B, allocator peak ${((r1["perf/max_memory_allocated_gb"] as number) * 2 ** 30).toFixed(0)} B`,
    );
    await split.close();

    // Offload and recompute on one rank: the same rows, the state moved between stages, memory reported.
    const managed = await cluster.experiment({
      ...config,
      name: "managed",
      runDir: join(dir.path, "managed"),
      offload: { optimizer: true },
      recompute: { granularity: "full" },
      totalSteps: 3,
    });
    const managedRows = await managed.run(3);
    managedRows.forEach((row, i) => {
      assertRowsClose(row, oneRows[i] as MetricsRow, `offload + recompute step ${i + 1}`);
      assert.ok(
        (row["timing_s/offload"] as number) > 0 && (row["timing_s/onload"] as number) > 0,
        "offload timed",
      );
      assert.ok((row["perf/offload_bytes"] as number) > 0, "the optimizer state moved to the host");
      assert.ok(
        (row["perf/memory/parameters_bytes"] as number) > 0 &&
          (row["perf/memory/gradients_bytes"] as number) > 0,
      );
      assert.equal(
        row["perf/memory/optimizer_bytes"],
        row["perf/onload_bytes"],
        "on the device for the update: what came back",
      );
    });
    await managed.close();
  } finally {
    await cluster.close();
  }
});
