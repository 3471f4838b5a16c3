// Model families against HF transformers on tiny random configs (fp32, CPU): per-token logprobs and
// entropy, gradients of a weighted NLL, greedy generation, seeded sampling, argument checks.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Model, supportedArchitectures } from "../../src/index.js";
import { maxAbsDiff, readTensors, relativeDiff } from "../helpers/parity.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Reference {
  tokens: number[];
  cuSeqlens: number[];
  lossWeights: number[];
  temperature: number;
  logprobs: number[];
  entropy: number[];
  logprobsT: number[];
  entropyT: number[];
  loss: number;
  prompts: number[][];
  greedy: number[][];
}

const dir = tempDir("model-parity");
let cases: string[] = [];
before(() => {
  cases = JSON.parse(runPython("model_reference.py", [dir.path])) as string[];
});
after(() => dir.cleanup());

function load(name: string): { model: Model; ref: Reference; caseDir: string } {
  const caseDir = join(dir.path, name);
  const config = JSON.parse(readFileSync(join(caseDir, "config.json"), "utf8")) as Record<string, unknown>;
  const model = Model.create(config, readTensors(caseDir, "weights"));
  const ref = JSON.parse(readFileSync(join(caseDir, "reference.json"), "utf8")) as Reference;
  return { model, ref, caseDir };
}

test("every case matches HF: logprobs, entropy, gradients, greedy tokens", async (t) => {
  assert.ok(cases.length >= 6);
  for (const name of cases) {
    await t.test(name, async () => {
      const { model, ref, caseDir } = load(name);
      try {
        const tokens = new Int32Array(ref.tokens);
        const cu = new Int32Array(ref.cuSeqlens);
        const plain = await model.logprobs(tokens, cu);
        // Chunks of 5 tokens: the chunk loop runs with a ragged tail, forward and backward.
        const hot = await model.logprobs(tokens, cu, ref.temperature, 5);
        const figures = {
          logprob: maxAbsDiff(plain.logprobs, ref.logprobs),
          entropy: maxAbsDiff(plain.entropy, ref.entropy),
          logprobT: maxAbsDiff(hot.logprobs, ref.logprobsT),
          entropyT: maxAbsDiff(hot.entropy, ref.entropyT),
          gradient: 0,
        };
        const { loss, gradients } = await model.lossBackward(
          tokens,
          cu,
          new Float32Array(ref.lossWeights),
          ref.temperature,
          5,
        );
        assert.ok(Math.abs(loss - ref.loss) <= 1e-4 * Math.abs(ref.loss), `loss ${loss} vs ${ref.loss}`);
        const refGrads = new Map(readTensors(caseDir, "grads").map((g) => [g.name, g]));
        assert.deepEqual(gradients.map((g) => g.name).sort(), [...refGrads.keys()].sort());
        for (const g of gradients) {
          const r = refGrads.get(g.name);
          assert.ok(r);
          assert.deepEqual(g.shape, r.shape);
          const rel = relativeDiff(g.data as Float32Array, r.data as Float32Array);
          figures.gradient = Math.max(figures.gradient, rel);
          assert.ok(rel <= 1e-4, `${name}: gradient of ${g.name} off by ${rel} (relative)`);
        }
        t.diagnostic(`${name}: ${JSON.stringify(figures)}`);
        assert.ok(figures.logprob <= 1e-4, `${name}: logprob off by ${figures.logprob}`);
        assert.ok(figures.entropy <= 1e-4, `${name}: entropy off by ${figures.entropy}`);
        assert.ok(figures.logprobT <= 1e-4, `${name}: logprob at temperature off by ${figures.logprobT}`);
        assert.ok(figures.entropyT <= 1e-4, `${name}: entropy at temperature off by ${figures.entropyT}`);

        const prompts = ref.prompts.map((p) => new Int32Array(p));
        const greedy = await model.generate(prompts, { maxNewTokens: 32 });
        greedy.forEach((g, i) => {
          assert.deepEqual(Array.from(g.tokens), ref.greedy[i], `${name}: greedy tokens of prompt ${i}`);
          assert.equal(g.finishReason, "length");
          assert.equal(g.logprobs.length, 32);
        });
      } finally {
        model.dispose();
      }
    });
  }
});

test("generation logprobs equal the training-side logprobs of the same tokens", async () => {
  const { model, ref } = load(cases[0] ?? "");
  try {
    const prompts = ref.prompts.map((p) => new Int32Array(p));
    const out = await model.generate(prompts, {
      maxNewTokens: 12,
      temperature: 0.8,
      topK: 50,
      topP: 0.9,
      seed: 7,
    });
    const full = out.map((g, i) => [...(ref.prompts[i] ?? []), ...g.tokens]);
    const cu = [0];
    for (const f of full) cu.push((cu[cu.length - 1] ?? 0) + f.length);
    const { logprobs } = await model.logprobs(new Int32Array(full.flat()), new Int32Array(cu), 0.8);
    out.forEach((g, i) => {
      const start = (cu[i] ?? 0) - i + (ref.prompts[i]?.length ?? 0) - 1;
      const training = logprobs.subarray(start, start + g.tokens.length);
      assert.ok(maxAbsDiff(g.logprobs, training) <= 1e-4, `sequence ${i}`);
    });
  } finally {
    model.dispose();
  }
});

test("sampling is reproducible by seed; stop tokens end a sequence", async () => {
  const { model, ref } = load(cases[1] ?? "");
  try {
    const prompts = ref.prompts.map((p) => new Int32Array(p));
    const options = { maxNewTokens: 16, temperature: 1.0, topP: 0.95, seed: 42 };
    const a = await model.generate(prompts, options);
    const b = await model.generate(prompts, options);
    const c = await model.generate(prompts, { ...options, seed: 43 });
    assert.deepEqual(
      a.map((g) => Array.from(g.tokens)),
      b.map((g) => Array.from(g.tokens)),
    );
    assert.deepEqual(
      a.map((g) => Array.from(g.logprobs)),
      b.map((g) => Array.from(g.logprobs)),
    );
    assert.notDeepEqual(
      a.map((g) => Array.from(g.tokens)),
      c.map((g) => Array.from(g.tokens)),
    );

    const stop = ref.greedy[0]?.[4] ?? 0;
    const stopped = await model.generate(prompts.slice(0, 1), { maxNewTokens: 32, stopTokenIds: [stop] });
    const first = ref.greedy[0]?.indexOf(stop) ?? -1;
    assert.deepEqual(Array.from(stopped[0]?.tokens ?? []), ref.greedy[0]?.slice(0, first + 1));
    assert.equal(stopped[0]?.finishReason, "stop");
  } finally {
    model.dispose();
  }
});

test("sampling is batch-invariant: a prompt's tokens depend on its sequence index, not on the other prompts of the call", async () => {
  const { model, ref } = load(cases[1] ?? "");
  try {
    const prompts = ref.prompts.map((p) => new Int32Array(p));
    const options = { maxNewTokens: 12, temperature: 1.0, topK: 50, topP: 0.9, seed: 7 };
    const whole = await model.generate(prompts, options);
    // Each prompt alone, told its index in the whole call, samples what it sampled there.
    for (let i = 0; i < prompts.length; i++) {
      const [alone] = await model.generate([prompts[i] as Int32Array], { ...options, sequenceOffset: i });
      assert.deepEqual(Array.from(alone?.tokens ?? []), Array.from(whole[i]?.tokens ?? []), `prompt ${i}`);
    }
    // The second half as a data-parallel rank would get it.
    const half = Math.floor(prompts.length / 2);
    const rest = await model.generate(prompts.slice(half), { ...options, sequenceOffset: half });
    assert.deepEqual(
      rest.map((g) => Array.from(g.tokens)),
      whole.slice(half).map((g) => Array.from(g.tokens)),
    );
  } finally {
    model.dispose();
  }
});

test("the inverse-CDF sampler draws each token with its probability (1,500 draws of one next token)", async () => {
  const { model, ref } = load(cases[1] ?? "");
  try {
    const prompt = new Int32Array(ref.prompts[0] ?? []);
    const n = 1500;
    const draws = await model.generate(
      Array.from({ length: n }, () => prompt),
      { maxNewTokens: 1, temperature: 0.15, seed: 11 },
    );
    const counts = new Map<number, { count: number; p: number }>();
    for (const g of draws) {
      const t = g.tokens[0] as number;
      const entry = counts.get(t) ?? { count: 0, p: Math.exp(g.logprobs[0] as number) };
      entry.count++;
      counts.set(t, entry);
    }
    let checked = 0;
    for (const [t, { count, p }] of counts) {
      if (p < 0.02) continue;
      const sd = Math.sqrt((p * (1 - p)) / n);
      assert.ok(Math.abs(count / n - p) <= 5 * sd, `token ${t}: frequency ${count / n}, probability ${p}`);
      checked++;
    }
    assert.ok(checked >= 3, `only ${checked} tokens with probability ≥ 0.02 were drawn`);
  } finally {
    model.dispose();
  }
});

test("parameters come back by HF name; bad arguments name the field", async () => {
  const { model, ref, caseDir } = load(cases[0] ?? "");
  const params = model.parameters();
  const weights = readTensors(caseDir, "weights");
  assert.deepEqual(params.map((p) => p.name).sort(), weights.map((w) => w.name).sort());
  const byName = new Map(params.map((p) => [p.name, p]));
  assert.deepEqual(
    Array.from(byName.get(weights[1]?.name ?? "")?.data as Float32Array),
    Array.from(weights[1]?.data as Float32Array),
  );
  await assert.rejects(
    async () => model.logprobs(new Int32Array(ref.tokens), new Int32Array([0, 3])),
    /cuSeqlens: must run from 0 to tokens.length/,
  );
  assert.throws(() => model.generate([new Int32Array(0)]), /prompts\[0\]: empty/);
  assert.throws(() => model.generate([new Int32Array([1])], { topP: 0 }), /topP: 0 must be in \(0, 1\]/);
  assert.throws(() => model.generate([new Int32Array([1])], { temperature: -1 }), /temperature: -1/);
  model.dispose();
  assert.throws(() => model.parameters(), /model: this model was disposed/);
  assert.throws(
    () => Model.create({ architectures: ["GPT2LMHeadModel"] }, []),
    /config.architectures\[0\]: "GPT2LMHeadModel" is not supported; supported: .*Qwen2ForCausalLM/,
  );
  assert.deepEqual(supportedArchitectures().sort(), [
    "DeepseekV3ForCausalLM",
    "LlamaForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
  ]);
  const config = JSON.parse(readFileSync(join(caseDir, "config.json"), "utf8")) as Record<string, unknown>;
  assert.throws(
    () => Model.create(config, weights.slice(1)),
    /weights: model.embed_tokens.weight is missing/,
  );
});
