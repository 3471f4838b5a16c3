// Qwen2.5-VL against HF transformers on a tiny random config (fp32, CPU): one packed batch holds a
// prompt with one image, a prompt with two, a text-only prompt and one starting with an image (four
// image sizes, windows cut at the edges). Vision-tower outputs, per-token logprobs and entropy,
// gradients of a weighted NLL, greedy generation, a saved folder reloaded by transformers.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { type ImageInputs, Model, type NamedHostTensor } from "../../src/index.js";
import { maxAbsDiff, readTensors, relativeDiff } from "../helpers/parity.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Reference {
  tokens: number[];
  cuSeqlens: number[];
  pixels: number[];
  grids: number[];
  imageToken: number;
  temperature: number;
  prompts: number[][];
  promptPixels: number[];
  promptGrids: number[];
  lossWeights: number[];
  logprobs: number[];
  entropy: number[];
  loss: number;
  greedy: number[][];
}

const dir = tempDir("vl-parity");
let ref: Reference;
let config: Record<string, unknown>;
before(() => {
  runPython("vl_reference.py", [dir.path]);
  ref = JSON.parse(readFileSync(join(dir.path, "reference.json"), "utf8")) as Reference;
  config = JSON.parse(readFileSync(join(dir.path, "config.json"), "utf8")) as Record<string, unknown>;
});
after(() => dir.cleanup());

function batchImages(): ImageInputs {
  return { pixels: new Float32Array(ref.pixels), grids: new Int32Array(ref.grids) };
}

function create(options: { freezeVision?: boolean } = {}): Model {
  return Model.create(config, readTensors(dir.path, "weights"), options);
}

test("vision tower outputs equal HF's for four images of different sizes in one varlen call", async () => {
  const model = create();
  try {
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    // The residual stream after the embedding holds the tower's outputs at the image rows.
    const embedded = await model.activations(tokens, cu, "model.embed_tokens", batchImages());
    const hidden = embedded.shape[1];
    const rows: number[] = [];
    ref.tokens.forEach((t, i) => {
      if (t === ref.imageToken) rows.push(i);
    });
    const ours = new Float32Array(rows.length * hidden);
    rows.forEach((r, j) => {
      ours.set(embedded.values.subarray(r * hidden, (r + 1) * hidden), j * hidden);
    });
    const [theirs] = readTensors(dir.path, "vision");
    assert.ok(theirs);
    assert.deepEqual(theirs.shape, [rows.length, hidden]);
    const diff = maxAbsDiff(ours, theirs.data as Float32Array);
    console.log(`vision tower: max |ours - HF| = ${diff.toExponential(2)} over ${rows.length} image tokens`);
    assert.ok(diff <= 1e-4, `vision outputs off by ${diff}`);
  } finally {
    model.dispose();
  }
});

test("logprobs, entropy and the gradients of every tensor match HF (images and a text-only prompt in one batch)", async () => {
  const model = create();
  try {
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    const out = await model.logprobs(tokens, cu, 1, 1024, undefined, batchImages());
    const logprob = maxAbsDiff(out.logprobs, ref.logprobs);
    const entropy = maxAbsDiff(out.entropy, ref.entropy);
    const { loss, gradients } = await model.lossBackward(
      tokens,
      cu,
      new Float32Array(ref.lossWeights),
      ref.temperature,
      7,
      undefined,
      batchImages(),
    );
    const refGrads = new Map(readTensors(dir.path, "grads").map((g) => [g.name, g]));
    assert.deepEqual(gradients.map((g) => g.name).sort(), [...refGrads.keys()].sort());
    let gradient = 0;
    for (const g of gradients) {
      const r = refGrads.get(g.name) as NamedHostTensor;
      assert.deepEqual(g.shape, r.shape, g.name);
      const rel = relativeDiff(g.data as Float32Array, r.data as Float32Array);
      gradient = Math.max(gradient, rel);
      assert.ok(rel <= 1e-4, `gradient of ${g.name} off by ${rel} (relative)`);
    }
    console.log(
      `qwen2.5-vl: ${JSON.stringify({ logprob, entropy, loss: Math.abs(loss - ref.loss) / Math.abs(ref.loss), gradient })}`,
    );
    assert.ok(logprob <= 1e-4, `logprobs off by ${logprob}`);
    assert.ok(entropy <= 1e-4, `entropy off by ${entropy}`);
    assert.ok(Math.abs(loss - ref.loss) <= 1e-4 * Math.abs(ref.loss), `loss ${loss} vs ${ref.loss}`);
    // The vision tower is trained too: its gradients are among those checked above.
    assert.ok(gradients.some((g) => g.name === "visual.patch_embed.proj.weight"));
  } finally {
    model.dispose();
  }
});

test("greedy generation equals HF's for 32 tokens, prompts with and without images in one call", async () => {
  const model = create();
  try {
    const prompts = ref.prompts.map((p) => new Int32Array(p));
    const images = { pixels: new Float32Array(ref.promptPixels), grids: new Int32Array(ref.promptGrids) };
    const greedy = await model.generate(prompts, { maxNewTokens: 32, images });
    greedy.forEach((g, i) => {
      assert.deepEqual(Array.from(g.tokens), ref.greedy[i], `greedy tokens of prompt ${i}`);
    });
    // Sampled generation: its logprobs are those the training side computes for the same tokens.
    const sampled = await model.generate(prompts, { maxNewTokens: 12, temperature: 0.8, seed: 5, images });
    const full = sampled.map((g, i) => [...(ref.prompts[i] ?? []), ...g.tokens]);
    const cu = [0];
    for (const f of full) cu.push((cu[cu.length - 1] ?? 0) + f.length);
    const { logprobs } = await model.logprobs(
      new Int32Array(full.flat()),
      new Int32Array(cu),
      0.8,
      1024,
      undefined,
      images,
    );
    let worst = 0;
    sampled.forEach((g, i) => {
      const start = (cu[i] ?? 0) - i + (ref.prompts[i]?.length ?? 0) - 1;
      worst = Math.max(worst, maxAbsDiff(g.logprobs, logprobs.subarray(start, start + g.tokens.length)));
    });
    console.log(`qwen2.5-vl: rollout vs training logprobs, max diff ${worst.toExponential(2)}`);
    assert.ok(worst <= 1e-4, `rollout and training logprobs differ by ${worst}`);
  } finally {
    model.dispose();
  }
});

test("a saved folder (after an update) reloads in transformers with the same tensors and logprobs", async () => {
  const model = create();
  const out = tempDir("vl-saved");
  try {
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    model.initOptimizer({ lr: 1e-2 });
    const mask = new Float32Array(tokens.length - (cu.length - 1)).fill(1);
    await model.trainStep(tokens, cu, mask, mask.length, 1, 1024, undefined, batchImages());
    await model.optimizerStep();
    await model.save(out.path);
    const params = model.parameters();
    writeTensors(join(dir.path, "saved-params"), params);
    const mine = await model.logprobs(tokens, cu, 1, 1024, undefined, batchImages());
    const reloaded = JSON.parse(runPython("vl_reference.py", ["reload", out.path, dir.path])) as {
      logprobs: number[];
      mismatched: string[];
      missing: string[];
    };
    assert.deepEqual(reloaded.mismatched, []);
    assert.deepEqual(reloaded.missing, []);
    const diff = maxAbsDiff(mine.logprobs, reloaded.logprobs);
    console.log(`qwen2.5-vl: saved folder reloaded in HF, logprobs max diff ${diff.toExponential(2)}`);
    assert.ok(diff <= 1e-4, `reloaded logprobs off by ${diff}`);
  } finally {
    model.dispose();
    out.cleanup();
  }
});

test("a frozen vision tower gets no gradients and is still saved", async () => {
  const model = create({ freezeVision: true });
  try {
    const names = model.gradients().map((g) => g.name);
    assert.ok(!names.some((n) => n.startsWith("visual.")));
    assert.ok(model.parameters().some((p) => p.name === "visual.merger.mlp.2.bias"));
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    const { gradients } = await model.lossBackward(
      tokens,
      cu,
      new Float32Array(ref.lossWeights),
      ref.temperature,
      1024,
      undefined,
      batchImages(),
    );
    assert.ok(gradients.every((g) => !g.name.startsWith("visual.")));
    const refGrads = new Map(readTensors(dir.path, "grads").map((g) => [g.name, g]));
    for (const g of gradients) {
      const rel = relativeDiff(g.data as Float32Array, refGrads.get(g.name)?.data as Float32Array);
      assert.ok(rel <= 1e-4, `gradient of ${g.name} off by ${rel} with the tower frozen`);
    }
  } finally {
    model.dispose();
  }
});

test("images that do not fit the tokens or the config are refused naming the problem", async () => {
  const model = create();
  try {
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    const grids = new Int32Array(ref.grids);
    await assert.rejects(
      model.logprobs(tokens, cu, 1, 1024, undefined, {
        pixels: new Float32Array(ref.pixels.slice(0, ref.pixels.length - 4 * 96)),
        grids: grids.subarray(0, grids.length - 3),
      }),
      /images: sequence 3 has image placeholder tokens at 1 but all 3 images are used/,
    );
    await assert.rejects(
      model.logprobs(tokens, cu, 1, 1024, undefined, {
        pixels: new Float32Array(ref.pixels.length / 2),
        grids,
      }),
      /images.pixels: expected \[\d+, 96\]/,
    );
    assert.throws(
      () =>
        model.logprobs(tokens, cu, 1, 1024, undefined, {
          pixels: new Float32Array(3),
          grids: new Int32Array(2),
        }),
      /images.grids: expected an Int32Array of \(t, h, w\) per image/,
    );
  } finally {
    model.dispose();
  }
});

function writeTensors(stem: string, tensors: NamedHostTensor[]): void {
  const manifest: { name: string; shape: number[]; offset: number }[] = [];
  const parts: Buffer[] = [];
  let offset = 0;
  for (const t of tensors) {
    const data = Float32Array.from(t.data as Float32Array);
    manifest.push({ name: t.name, shape: t.shape, offset });
    parts.push(Buffer.from(data.buffer));
    offset += data.byteLength;
  }
  writeFileSync(`${stem}.bin`, Buffer.concat(parts));
  writeFileSync(`${stem}.json`, JSON.stringify(manifest));
}
