// Issue 16 on the real engine (fp32 CPU, the worker's command table in this process): resume
// writes where it was resumed from and says which checkpoint it fell back to, weights that are not
// floats or not finite are refused at load, out-of-vocabulary ids are named, a skipped old-logprob
// pass still measures the rollout/training mismatch, no metric is a constant, and user mistakes
// carry their own codes.
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { readSafetensors, writeSafetensors } from "../../src/native/io.js";
import { Model } from "../../src/native/model.js";
import { type ExperimentConfig, resolveConfig } from "../../src/rl/config.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { UserError } from "../../src/util/errors.js";
import { localRank } from "../../src/worker/local.js";
import { tempDir } from "../helpers/python.js";

const dir = tempDir("rl-hardening");
let modelPath = "";
let dataFile = "";
before(async () => {
  modelPath = join(dir.path, "model");
  await writeTinyModel(modelPath, { seed: 5 });
  dataFile = writeNextDigitData(join(dir.path, "data"));
});
after(() => dir.cleanup());

function config(name: string, overrides: Partial<ExperimentConfig> = {}): ExperimentConfig {
  return {
    name,
    runDir: join(dir.path, "runs", name),
    seed: 3,
    model: { path: modelPath, dtype: "float32" },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 4,
    rollout: { samplesPerPrompt: 4, maxResponseTokens: 3 },
    tokensPerMicroBatch: 4096,
    optimizer: { lr: 1e-3 },
    totalSteps: 4,
    checkpoint: { everySteps: 1, keep: 3 },
    ...overrides,
  };
}

async function withRun<T>(c: ExperimentConfig, fn: (run: ExperimentRun) => Promise<T>): Promise<T> {
  const local = localRank();
  const run = await ExperimentRun.create(resolveConfig(c), local.call);
  try {
    return await fn(run);
  } finally {
    await run.close();
    local.dispose();
  }
}

async function withResumed<T>(path: string, fn: (run: ExperimentRun) => Promise<T>): Promise<T> {
  const local = localRank();
  const run = await ExperimentRun.resume(path, local.call);
  try {
    return await fn(run);
  } finally {
    await run.close();
    local.dispose();
  }
}

const checkpoints = (runDir: string) =>
  readdirSync(join(runDir, "checkpoints")).filter((n) => n.startsWith("step-"));

test("resuming a copy of a run folder writes into the copy, never into the original", async () => {
  const original = join(dir.path, "runs", "original");
  await withRun(config("original", { runDir: original }), (run) => run.run(2));
  const copy = join(dir.path, "runs", "copy");
  cpSync(original, copy, { recursive: true });
  await withResumed(copy, async (run) => {
    assert.equal(run.runDir, copy);
    assert.ok(
      run.warnings.some((w) => w.includes(`a copy of ${original}`)),
      JSON.stringify(run.warnings),
    );
    await run.run(1);
  });
  assert.deepEqual(checkpoints(original), ["step-000001", "step-000002"], "the original is untouched");
  assert.deepEqual(checkpoints(copy), ["step-000001", "step-000002", "step-000003"]);
});

test("a damaged newest checkpoint is passed over, and the resumed run says which one and why", async () => {
  const copy = join(dir.path, "runs", "copy");
  const newest = join(copy, "checkpoints", "step-000003");
  writeFileSync(join(newest, "state.json"), '{"step": 3}'.padEnd(40, " "));
  await withResumed(copy, async (run) => {
    assert.equal(run.step, 2);
    const said = run.warnings.find((w) => w.includes(newest));
    assert.ok(said, JSON.stringify(run.warnings));
    assert.match(said, /state\.json (has \d+ bytes|does not match its sha256)/);
  });
  // A checkpoint folder taken out of its run folder has no run folder to write into: refused.
  const loose = join(dir.path, "loose-step");
  cpSync(join(copy, "checkpoints", "step-000002"), loose, { recursive: true });
  await assert.rejects(
    ExperimentRun.resume(loose, localRank().call),
    (e: Error) => e instanceof UserError && /not inside a run folder's checkpoints/.test(e.message),
  );
});

test("with the old-logprob pass skipped, the rollout/training mismatch is still measured on a sample", async () => {
  await withRun(config("no-recompute", { algorithm: { recomputeOldLogprobs: false } }), async (run) => {
    assert.equal(run.recomputesOldLogprobs, false);
    const row = await run.runStep();
    assert.equal(row["training/rollout_probs_diff_sequences"], 8, "8 of the 16 sequences compared");
    assert.ok(Number.isFinite(row["training/rollout_probs_diff_max"]));
    // A metric is measured or absent: the colocated sync moves nothing and writes no sync_bytes.
    assert.equal(Object.hasOwn(row, "perf/sync_bytes"), false);
  });
  // "auto" on CPU recomputes: exactness is proven only for the CUDA bf16 slot decoder.
  await withRun(config("auto"), async (run) => {
    assert.equal(run.recomputesOldLogprobs, true);
    const row = await run.runStep();
    assert.equal(row["training/rollout_probs_diff_sequences"], 16);
  });
});

test("user mistakes carry their own codes and name the field", async () => {
  const code = (expected: string, field?: string) => (e: Error) =>
    e instanceof UserError && e.code === expected && (field === undefined || e.field === field);
  const local = localRank();
  try {
    const create = (c: ExperimentConfig) => ExperimentRun.create(resolveConfig(c), local.call);
    await assert.rejects(
      create(config("m", { model: { path: join(dir.path, "nope") } })),
      code("NOT_FOUND", "model.path"),
    );
    await assert.rejects(
      create(config("d", { data: { train: join(dir.path, "nope.jsonl"), maxPromptTokens: 8 } })),
      code("NOT_FOUND", "data.train[0]"),
    );
    const empty = join(dir.path, "empty.jsonl");
    writeFileSync(empty, "");
    await assert.rejects(
      create(config("e", { data: { train: empty, maxPromptTokens: 8 } })),
      (e: Error) => code("BAD_DATA", "data.train")(e) && /hold no prompts/.test(e.message),
    );
    const bad = join(dir.path, "bad.jsonl");
    writeFileSync(bad, "{oops\n");
    await assert.rejects(
      create(config("b", { data: { train: bad, maxPromptTokens: 8 } })),
      code("BAD_DATA", "data.train"),
    );
    await assert.rejects(
      create(config("p", { promptsPerStep: 100_000 })),
      code("BAD_ARGS", "promptsPerStep"),
    );
  } finally {
    local.dispose();
  }
  await withRun(config("kept"), async (run) => {
    await run.runStep();
    assert.throws(() => run.rollouts(9), code("NOT_KEPT"));
    await assert.rejects(run.replay(1), code("NOT_KEPT"));
    await run.rollout();
    await assert.rejects(run.save(), code("BAD_STATE"));
    const busy = run.exclusive("run", () => new Promise((r) => setTimeout(r, 50)));
    await assert.rejects(
      run.exclusive("set", async () => 0),
      code("BUSY"),
    );
    await busy;
  });
});

test("a float weight stored as int32, or a NaN weight, is refused at load naming the tensor", async () => {
  const source = await readSafetensors(join(modelPath, "model.safetensors"));
  const target = source.tensors.find((t) => t.name.endsWith("norm.weight")) ?? source.tensors[0];
  assert.ok(target);
  const folder = (name: string, tensors: typeof source.tensors) => {
    const out = join(dir.path, name);
    cpSync(modelPath, out, { recursive: true });
    return writeSafetensors(join(out, "model.safetensors"), tensors).then(() => out);
  };
  const asInt = await folder(
    "as-int32",
    source.tensors.map((t) =>
      t === target
        ? { ...t, dtype: "int32" as const, data: new Int32Array((t.data as Float32Array).buffer.slice(0)) }
        : t,
    ),
  );
  await assert.rejects(
    Model.load(asInt, { device: "cpu", dtype: "float32" }),
    new RegExp(
      `tensor '${target.name.replace(/\./g, "\\.")}' is stored as Int; model weights must be a floating type`,
    ),
  );
  const nan = Float32Array.from(target.data as Float32Array);
  nan[1] = Number.NaN;
  nan[2] = Number.POSITIVE_INFINITY;
  const withNan = await folder(
    "with-nan",
    source.tensors.map((t) => (t === target ? { ...t, data: nan } : t)),
  );
  await assert.rejects(
    Model.load(withNan, { device: "cpu", dtype: "float32" }),
    /holds 2 non-finite values \(NaN or Inf\).*the checkpoint is damaged/,
  );
  assert.ok(existsSync(withNan));
});

test("a token id outside the vocabulary is refused naming its position; freeing an unknown model is an error", async () => {
  const local = localRank();
  try {
    await local.call(0, "model.load", { name: "m", dir: modelPath, dtype: "float32" });
    const tokens = new Int32Array([1, 2, 3, 100_000]);
    await assert.rejects(
      local.call(0, "model.logprobs", { name: "m", tokens, cuSeqlens: new Int32Array([0, 4]) }),
      /args\.tokens\[3\]: token id 100000 is outside the vocabulary of model "m" \(0 to \d+\)/,
    );
    await assert.rejects(
      local.call(0, "model.generate", { name: "m", prompts: [new Int32Array([1]), new Int32Array([2, -1])] }),
      /args\.prompts\[1\]\[1\]: token id -1 is outside the vocabulary/,
    );
    await assert.rejects(
      local.call(0, "model.free", { name: "never-loaded" }),
      (e: Error & { code?: string }) => {
        return e.code === "NOT_FOUND" && /no model "never-loaded"/.test(e.message);
      },
    );
    assert.deepEqual(await local.call(0, "model.free", { name: "m" }), { freed: true });
  } finally {
    local.dispose();
  }
});

test("DAPO on acc with a reward that gives no acc is an error naming the field, not a silent switch to the score", async () => {
  const module = join(dir.path, "no-acc.mjs");
  writeFileSync(module, "export const score = (s) => ({ score: s.response.length % 2 });\n");
  await withRun(
    config("no-acc", {
      reward: { fn: { module, exportName: "score" } },
      algorithm: { dynamicSampling: { metric: "acc", maxGenerationRounds: 2 } },
    }),
    async (run) => {
      await run.rollout();
      await run.score();
      await assert.rejects(
        run.filter(),
        (e: Error) =>
          e instanceof UserError &&
          e.field === "algorithm.dynamicSampling.metric" &&
          /returned no acc/.test(e.message),
      );
    },
  );
});

test("export surfaces a tokenizer file it cannot copy; only a file the model lacks is skipped", async () => {
  await withRun(config("export"), async (run) => {
    const target = join(dir.path, "exported");
    mkdirSync(join(target, "tokenizer.json"), { recursive: true }); // a folder where the file goes
    await assert.rejects(run.export(target), /EISDIR|illegal operation on a directory/);
    const clean = join(dir.path, "exported-clean");
    await run.export(clean);
    assert.ok(existsSync(join(clean, "tokenizer.json")));
  });
});

test("routing replay with sequences that carry no recorded experts is an error, not replay silently switched off", async () => {
  // A dense model records no experts: replaying "them" would mix replayed and fresh routing.
  await withRun(
    config("replay-without-experts", {
      rollout: { samplesPerPrompt: 4, maxResponseTokens: 3, routingReplay: "replay" },
    }),
    async (run) => {
      await assert.rejects(
        () => run.runStep(),
        /rollout\.routingReplay: "replay", but 16 of 16 sequences carry no recorded experts/,
      );
    },
  );
});

test("a model shape that cannot be read is named in the run's warnings (perf/mfu/actor then left out), not swallowed", async () => {
  // Resumed, the actor comes from the checkpoint while the FLOP shape is read from model.path:
  // a damaged config.json there must not turn into a silently missing (or invented) MFU.
  const folder = join(dir.path, "model-flop");
  cpSync(modelPath, folder, { recursive: true });
  const c = config("flop-shape", { model: { path: folder, dtype: "float32" }, totalSteps: 2 });
  await withRun(c, async (run) => {
    assert.deepEqual(run.warnings, [], "no warning while the shape is readable");
    await run.runStep();
  });
  const config_ = join(folder, "config.json");
  writeFileSync(config_, readFileSync(config_, "utf8").replace('"num_attention_heads"', '"heads_renamed"'));
  await withResumed(join(dir.path, "runs", "flop-shape"), async (run) => {
    const said = run.warnings.find((w) => w.startsWith("perf/mfu/actor is not measured"));
    assert.ok(said?.includes("num_attention_heads"), JSON.stringify(run.warnings));
    const row = await run.runStep();
    assert.equal(row["perf/mfu/actor"], undefined);
    assert.ok(Number.isFinite(row["actor/pg_loss"]), "the run goes on");
  });
});
