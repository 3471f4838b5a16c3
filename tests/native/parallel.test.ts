// Tensor, sequence and data parallelism (with ZeRO-1) against the single-device model, on CPU
// worker processes talking through gloo, in fp32: logprobs and entropy within 1e-5, gathered
// gradients within 1e-5 relative, parameters after 3 AdamW updates within 1e-5, greedy generation
// identical. Families: Qwen3 (q/k norms), Qwen2 (biases, tied), Llama (untied, o_proj bias), and
// grouped-query attention with fewer key-value heads than tensor ranks (replicated KV heads).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { checkLayout, type Layout, Model } from "../../src/index.js";
import { readSafetensors, type StoredTensor } from "../../src/native/io.js";
import { compareScenario, runLayout } from "../helpers/parallel-layout.js";
import type { ParallelRankConfig } from "../helpers/parallel-rank.js";
import { runScenario, type ScenarioResult } from "../helpers/parallel-scenario.js";
import { maxAbsDiff } from "../helpers/parity.js";
import { tempDir } from "../helpers/python.js";
import { freePort, runRanks } from "../helpers/ranks.js";
import { type TinyDenseShape, writeTinyDense } from "../helpers/tiny-models.js";

interface Case {
  shape: TinyDenseShape;
  layouts: [string, Layout, number][];
}

const cases: Case[] = [
  {
    shape: { family: "qwen3", heads: 4, kvHeads: 2 },
    layouts: [
      ["TP2", { tensor: 2 }, 2],
      ["TP2+SP", { tensor: 2, sequenceParallel: true }, 2],
      ["DP2", { data: 2 }, 2],
      ["TP4 (kv heads 2 < 4: replicated)", { tensor: 4 }, 4],
      ["TP2 x DP2", { tensor: 2, data: 2 }, 4],
    ],
  },
  {
    shape: { family: "qwen2", heads: 4, kvHeads: 1 },
    layouts: [["TP2+SP (kv heads 1 < 2)", { tensor: 2, sequenceParallel: true }, 2]],
  },
  { shape: { family: "llama", heads: 4, kvHeads: 4 }, layouts: [["TP2 x DP2", { tensor: 2, data: 2 }, 4]] },
];

for (const { shape, layouts } of cases) {
  for (const [label, layout, world] of layouts) {
    test(`${shape.family} (${shape.heads} heads, ${shape.kvHeads} kv heads) at ${label} equals one device: logprobs, entropy, gradients, 3 AdamW updates, greedy tokens`, {
      timeout: 200_000,
    }, async () => {
      const dir = tempDir("parallel");
      try {
        const config = await writeTinyDense(join(dir.path, "model"), shape);
        const vocab = config.vocab_size as number;
        const single = await Model.load(join(dir.path, "model"));
        let ref: ScenarioResult;
        try {
          ref = await runScenario(single, vocab);
        } finally {
          single.dispose();
        }
        compareScenario((await runLayout(dir.path, vocab, layout, world, "run")).result, ref, label);
      } finally {
        dir.cleanup();
      }
    });
  }
}

test("saved at TP2 x DP2, loaded at one device and at TP2: identical parameters and optimizer state", {
  timeout: 240_000,
}, async () => {
  const dir = tempDir("parallel-ckpt");
  try {
    const config = await writeTinyDense(join(dir.path, "model"), { family: "qwen3", heads: 4, kvHeads: 2 });
    const vocab = config.vocab_size as number;
    const saved = join(dir.path, "saved");
    const { result: got } = await runLayout(dir.path, vocab, { tensor: 2, data: 2 }, 4, "run", {
      saveDir: saved,
    });
    const savedState = await readSafetensors(join(saved, "optimizer.safetensors"));
    // One device: the HF folder holds the trained parameters, the optimizer file its state.
    const single = await Model.load(saved);
    try {
      for (const t of single.parameters()) {
        assert.equal(
          maxAbsDiff(t.data as Float32Array, got.parameters[t.name] ?? []),
          0,
          `${t.name} after reload`,
        );
      }
      single.initOptimizer({ lr: 1e-3, weightDecay: 0.01, maxGradNorm: 0.5 });
      await single.loadOptimizer(join(saved, "optimizer.safetensors"));
      await single.saveOptimizer(join(dir.path, "single.safetensors"));
    } finally {
      single.dispose();
    }
    assertSameState(await readSafetensors(join(dir.path, "single.safetensors")), savedState, "one device");
    // Another layout: TP2 reads its slices of both files.
    const port = await freePort();
    const out = join(dir.path, "tp2.json");
    const configs: ParallelRankConfig[] = [0, 1].map((rank) => ({
      port,
      rank,
      worldSize: 2,
      timeoutMs: 20_000,
      layout: { tensor: 2 },
      modelDir: saved,
      vocab,
      out,
      loadOnly: true,
    }));
    for (const r of await runRanks(configs, 100_000, {}, "parallel-rank.js"))
      assert.equal(r.ok, true, r.error);
    const tp2 = JSON.parse(readFileSync(out, "utf8")) as Record<string, number[]>;
    for (const [name, p] of Object.entries(got.parameters)) {
      assert.equal(maxAbsDiff(tp2[name] ?? [], p), 0, `${name} at TP2`);
    }
    assertSameState(await readSafetensors(`${out}.optimizer.safetensors`), savedState, "TP2");
  } finally {
    dir.cleanup();
  }
});

function assertSameState(a: { tensors: StoredTensor[] }, b: { tensors: StoredTensor[] }, what: string): void {
  const other = new Map(b.tensors.map((t) => [t.name, t]));
  assert.equal(a.tensors.length, b.tensors.length, `${what}: state entries`);
  for (const t of a.tensors) {
    const u = other.get(t.name);
    assert.ok(u, `${what}: ${t.name} missing`);
    assert.deepEqual(t.shape, u.shape, `${what}: ${t.name} shape`);
    assert.equal(maxAbsDiff(t.data as Float32Array, u.data as Float32Array), 0, `${what}: ${t.name}`);
  }
}

test("impossible layouts are refused naming the numbers: tensor 3 over 4 heads, a layout that does not fill the group", {
  timeout: 60_000,
}, async () => {
  assert.throws(
    () => checkLayout({ tensor: 2 }, 3),
    /tensor 2 × context 1 × data 1 × pipeline 1 = 2 ranks, but the process group has 3/,
  );
  assert.throws(() => checkLayout({ data: 2, expert: 3 }, 2), /layout\.expert: 3 must divide/);
  const dir = tempDir("parallel-bad");
  try {
    await writeTinyDense(join(dir.path, "model"), { family: "qwen3", heads: 4, kvHeads: 2, vocab: 96 });
    const port = await freePort();
    const configs: ParallelRankConfig[] = [0, 1, 2].map((rank) => ({
      port,
      rank,
      worldSize: 3,
      timeoutMs: 5_000,
      layout: { tensor: 3 },
      modelDir: join(dir.path, "model"),
      vocab: 96,
      out: join(dir.path, "x.json"),
    }));
    for (const r of await runRanks(configs, 30_000, {}, "parallel-rank.js")) {
      assert.equal(r.ok, false);
      assert.match(r.error ?? "", /layout\.tensor: 3 does not divide num_attention_heads \(4\)/);
      assert.ok((r.elapsedMs ?? 0) < 10_000, `rank ${r.rank} failed after ${r.elapsedMs} ms`);
    }
  } finally {
    dir.cleanup();
  }
});

test("a rank that dies before a tensor-parallel forward: its peer's logprobs fail within 10 s naming the group and the collective", {
  timeout: 60_000,
}, async () => {
  const dir = tempDir("parallel-dead");
  try {
    await writeTinyDense(join(dir.path, "model"), { family: "qwen3", heads: 4, kvHeads: 2, vocab: 96 });
    const port = await freePort();
    const configs: ParallelRankConfig[] = [0, 1].map((rank) => ({
      port,
      rank,
      worldSize: 2,
      timeoutMs: 8_000,
      layout: { tensor: 2 },
      modelDir: join(dir.path, "model"),
      vocab: 96,
      out: join(dir.path, "x.json"),
      exitAfterLoad: rank === 1,
    }));
    const [survivor, dead] = await runRanks(configs, 30_000, {}, "parallel-rank.js");
    assert.equal(dead?.exited, true);
    assert.equal(survivor?.ok, false);
    assert.match(survivor?.error ?? "", /on rank 0 of 2 \(group mesh0\/tensor\/0, gloo/);
    assert.ok((survivor?.elapsedMs ?? 0) < 10_000, `failed after ${survivor?.elapsedMs} ms`);
  } finally {
    dir.cleanup();
  }
});
