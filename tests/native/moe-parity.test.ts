// Mixture-of-experts families (Qwen3-MoE, Mixtral, DeepSeek-V3) against HF transformers on tiny
// random configs (fp32, CPU): logprobs, entropy, gradients, greedy generation, folders both ways,
// routing replay against HF under forced routing and against generation's own record, router
// statistics, and the grouped-GEMM expert path against the per-expert loop.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Model, type NamedHostTensor, supportedArchitectures } from "../../src/index.js";
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
  routedExperts: number[];
  moe: { layers: number; experts: number; topK: number };
  replayLogprobs: number[];
  replayLoss: number;
  prompts: number[][];
  greedy: number[][];
}

/** The largest relative difference over gradients, checking names and shapes match. */
function worstGradient(ours: NamedHostTensor[], reference: NamedHostTensor[], label: string): number {
  const refs = new Map(reference.map((g) => [g.name, g]));
  assert.deepEqual(ours.map((g) => g.name).sort(), [...refs.keys()].sort(), `${label}: gradient names`);
  let worst = 0;
  for (const g of ours) {
    const r = refs.get(g.name);
    assert.ok(r);
    assert.deepEqual(g.shape, r.shape, `${label}: shape of ${g.name}`);
    const rel = relativeDiff(g.data as Float32Array, r.data as Float32Array);
    assert.ok(rel <= 1e-4, `${label}: gradient of ${g.name} off by ${rel} (relative)`);
    worst = Math.max(worst, rel);
  }
  return worst;
}

const dir = tempDir("moe-parity");
let cases: string[] = [];
before(() => {
  cases = JSON.parse(runPython("moe_reference.py", ["make", dir.path])) as string[];
});
after(() => dir.cleanup());

function caseDir(name: string): string {
  return join(dir.path, name);
}

function reference(name: string): Reference {
  return JSON.parse(readFileSync(join(caseDir(name), "reference.json"), "utf8")) as Reference;
}

function config(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(caseDir(name), "config.json"), "utf8")) as Record<string, unknown>;
}

function create(name: string): Model {
  return Model.create(config(name), readTensors(caseDir(name), "weights"));
}

/** Prompt + generated tokens of each generation, packed, with their recorded experts. */
function pack(prompts: number[][], generations: { tokens: Int32Array; experts?: Int32Array }[]) {
  const full = generations.map((g, i) => [...(prompts[i] ?? []), ...g.tokens]);
  const cu = [0];
  for (const f of full) cu.push((cu[cu.length - 1] ?? 0) + f.length);
  const experts = new Int32Array(generations.reduce((n, g) => n + (g.experts?.length ?? 0), 0));
  let at = 0;
  for (const g of generations) {
    experts.set(g.experts ?? [], at);
    at += g.experts?.length ?? 0;
  }
  return { tokens: new Int32Array(full.flat()), cu: new Int32Array(cu), experts };
}

test("the three MoE architectures are registered", () => {
  const names = supportedArchitectures();
  for (const a of ["Qwen3MoeForCausalLM", "MixtralForCausalLM", "DeepseekV3ForCausalLM"]) {
    assert.ok(names.includes(a), a);
  }
});

test("every case matches HF: logprobs, entropy, gradients, greedy tokens, HF folders both ways", async (t) => {
  assert.equal(cases.length, 7);
  const pairs: string[] = [];
  for (const name of cases) {
    await t.test(name, async () => {
      const ref = reference(name);
      const model = create(name);
      try {
        const tokens = new Int32Array(ref.tokens);
        const cu = new Int32Array(ref.cuSeqlens);
        const plain = await model.logprobs(tokens, cu);
        const hot = await model.logprobs(tokens, cu, ref.temperature, 5);
        const figures = {
          logprob: maxAbsDiff(plain.logprobs, ref.logprobs),
          entropy: maxAbsDiff(plain.entropy, ref.entropy),
          logprobT: maxAbsDiff(hot.logprobs, ref.logprobsT),
          entropyT: maxAbsDiff(hot.entropy, ref.entropyT),
          gradient: 0,
          hfFolderLogprob: 0,
        };
        const { loss, gradients } = await model.lossBackward(
          tokens,
          cu,
          new Float32Array(ref.lossWeights),
          ref.temperature,
          5,
        );
        assert.ok(Math.abs(loss - ref.loss) <= 1e-4 * Math.abs(ref.loss), `loss ${loss} vs ${ref.loss}`);
        figures.gradient = worstGradient(gradients, readTensors(caseDir(name), "grads"), name);

        // The folder save_pretrained wrote stores experts one tensor per expert; saving splits them
        // again. (Saved from a loaded model: a config that went through JS has lost the ".0" of its
        // floats, which transformers 5 refuses for some fields, e.g. Mixtral's router_jitter_noise.)
        const folder = await Model.load(join(caseDir(name), "hf"));
        try {
          figures.hfFolderLogprob = maxAbsDiff((await folder.logprobs(tokens, cu)).logprobs, ref.logprobs);
          const saved = join(dir.path, `saved_${name}`);
          await folder.save(saved);
          pairs.push(join(caseDir(name), "hf"), saved);
        } finally {
          folder.dispose();
        }
        t.diagnostic(`${name}: ${JSON.stringify(figures)}`);
        for (const [key, value] of Object.entries(figures)) {
          if (key !== "gradient") assert.ok(value <= 1e-4, `${name}: ${key} off by ${value}`);
        }

        const greedy = await model.generate(
          ref.prompts.map((p) => new Int32Array(p)),
          { maxNewTokens: 32 },
        );
        greedy.forEach((g, i) => {
          assert.deepEqual(Array.from(g.tokens), ref.greedy[i], `${name}: greedy tokens of prompt ${i}`);
        });
      } finally {
        model.dispose();
      }
    });
  }
  const results = JSON.parse(runPython("moe_reference.py", ["verify", ...pairs])) as {
    missing: string[];
    unexpected: string[];
    maxLogitDiff: number;
  }[];
  t.diagnostic(`saved folders, max |logit - HF|: ${results.map((r) => r.maxLogitDiff).join(", ")}`);
  results.forEach((r, i) => {
    const name = cases[i];
    assert.deepEqual(r.missing, [], `${name}: missing keys`);
    assert.deepEqual(r.unexpected, [], `${name}: unexpected keys`);
    assert.ok(r.maxLogitDiff <= 1e-6, `${name}: our saved folder's logits differ by ${r.maxLogitDiff}`);
  });
});

test("routing replay matches HF under the same forced experts, logprobs and gradients", async (t) => {
  for (const name of cases) {
    const ref = reference(name);
    const model = create(name);
    try {
      assert.deepEqual(model.moe, ref.moe);
      const tokens = new Int32Array(ref.tokens);
      const cu = new Int32Array(ref.cuSeqlens);
      const routed = new Int32Array(ref.routedExperts);
      const replayed = await model.logprobs(tokens, cu, 1, 1024, routed);
      const diff = maxAbsDiff(replayed.logprobs, ref.replayLogprobs);
      // Forcing moves the logprobs, or the test would show nothing.
      assert.ok(
        maxAbsDiff(ref.replayLogprobs, ref.logprobs) > 1e-2,
        `${name}: forced routing changed nothing`,
      );
      const { loss, gradients } = await model.lossBackward(
        tokens,
        cu,
        new Float32Array(ref.lossWeights),
        ref.temperature,
        1024,
        routed,
      );
      assert.ok(Math.abs(loss - ref.replayLoss) <= 1e-4 * Math.abs(ref.replayLoss), `${name}: replay loss`);
      const gradient = worstGradient(gradients, readTensors(caseDir(name), "replay_grads"), `${name} replay`);
      t.diagnostic(`${name}: replay logprob ${diff}, gradient ${gradient}`);
      assert.ok(diff <= 1e-4, `${name}: replayed logprobs off by ${diff}`);
    } finally {
      model.dispose();
    }
  }
});

test("generation records the experts it used; replaying them reproduces its logprobs", async () => {
  // DeepSeek's selection bias steers selection only: moving it changes the routing while the
  // weights of given experts stay put, so replay must give back generation's logprobs exactly.
  const name = "deepseek_v3_qlora_yarn";
  const ref = reference(name);
  const model = create(name);
  const tensors = readTensors(caseDir(name), "weights").map((t) =>
    t.name.endsWith("e_score_correction_bias")
      ? { ...t, data: (t.data as Float32Array).map((v, i) => v + (i % 2 === 0 ? 0.3 : -0.3)) }
      : t,
  );
  const steered = Model.create(config(name), tensors);
  try {
    const prompts = ref.prompts.map((p) => new Int32Array(p));
    const generations = await model.generate(prompts, { maxNewTokens: 12, recordExperts: true });
    const { layers, topK } = model.moe;
    generations.forEach((g, i) => {
      const rows = (ref.prompts[i]?.length ?? 0) + g.tokens.length;
      assert.equal(g.experts?.length, rows * layers * topK);
      // The last generated token never went through the model.
      assert.ok(g.experts?.subarray((rows - 1) * layers * topK).every((e) => e === -1));
      assert.ok(g.experts?.subarray(0, (rows - 1) * layers * topK).every((e) => e >= 0));
    });
    const packed = pack(ref.prompts, generations);
    const at = (lp: Float32Array, i: number, g: { tokens: Int32Array }) => {
      const start = (packed.cu[i] ?? 0) - i + (ref.prompts[i]?.length ?? 0) - 1;
      return lp.subarray(start, start + g.tokens.length);
    };
    const free = await steered.logprobs(packed.tokens, packed.cu);
    const replayed = await steered.logprobs(packed.tokens, packed.cu, 1, 1024, packed.experts);
    let freeDiff = 0;
    generations.forEach((g, i) => {
      assert.ok(maxAbsDiff(at(replayed.logprobs, i, g), g.logprobs) <= 1e-5, `sequence ${i} under replay`);
      freeDiff = Math.max(freeDiff, maxAbsDiff(at(free.logprobs, i, g), g.logprobs));
    });
    assert.ok(freeDiff > 1e-3, `moving the bias should change the routing (max diff ${freeDiff})`);
    // Generation without recording returns no experts.
    const plain = await model.generate(prompts.slice(0, 1), { maxNewTokens: 2 });
    assert.equal(plain[0]?.experts, undefined);
  } finally {
    model.dispose();
    steered.dispose();
  }
});

test("generation's experts replayed on the same model give generation's logprobs (Qwen3-MoE)", async () => {
  const name = "qwen3_moe_mlp_only";
  const ref = reference(name);
  const model = create(name);
  try {
    const generations = await model.generate(
      ref.prompts.map((p) => new Int32Array(p)),
      { maxNewTokens: 12, temperature: 1, seed: 3, recordExperts: true },
    );
    const packed = pack(ref.prompts, generations);
    const free = await model.logprobs(packed.tokens, packed.cu);
    const replayed = await model.logprobs(packed.tokens, packed.cu, 1, 1024, packed.experts);
    assert.ok(maxAbsDiff(free.logprobs, replayed.logprobs) <= 1e-5);
    generations.forEach((g, i) => {
      const start = (packed.cu[i] ?? 0) - i + (ref.prompts[i]?.length ?? 0) - 1;
      const training = replayed.logprobs.subarray(start, start + g.tokens.length);
      assert.ok(maxAbsDiff(training, g.logprobs) <= 1e-5, `sequence ${i}`);
    });
  } finally {
    model.dispose();
  }
});

test("trainStep and policyStep replay routedExperts like lossBackward", async () => {
  const name = "deepseek_v3_moonlight";
  const ref = reference(name);
  const tokens = new Int32Array(ref.tokens);
  const cu = new Int32Array(ref.cuSeqlens);
  const routed = new Int32Array(ref.routedExperts);
  const predicted = tokens.length - (cu.length - 1);
  const ones = new Float32Array(predicted).fill(1);
  const advantages = Float32Array.from({ length: predicted }, (_, i) => Math.sin(i) + 0.5);
  const gradientsOf = async (run: (model: Model) => Promise<unknown>) => {
    const model = create(name);
    try {
      await run(model);
      return model.gradients();
    } finally {
      model.dispose();
    }
  };
  // trainStep: sum(mask · −logprob) / N is lossBackward with weights 1/N.
  const trained = await gradientsOf((m) => m.trainStep(tokens, cu, ones, predicted, 1, 1024, routed));
  const nll = await (async () => {
    const model = create(name);
    try {
      const weights = new Float32Array(predicted).fill(1 / predicted);
      return (await model.lossBackward(tokens, cu, weights, 1, 1024, routed)).gradients;
    } finally {
      model.dispose();
    }
  })();
  worstGradient(trained, nll, "trainStep with routedExperts");
  // policyStep at ratio 1 (old = current logprobs): token-mean −A · logprob / N.
  const policy = await gradientsOf(async (m) => {
    const { logprobs } = await m.logprobs(tokens, cu, 1, 1024, routed);
    return m.policyStep(
      tokens,
      cu,
      { oldLogprobs: logprobs, advantages, mask: ones },
      { tokens: predicted, sequences: cu.length - 1 },
      {},
      1,
      1024,
      routed,
    );
  });
  const weighted = await (async () => {
    const model = create(name);
    try {
      const weights = advantages.map((a) => a / predicted);
      return (await model.lossBackward(tokens, cu, weights, 1, 1024, routed)).gradients;
    } finally {
      model.dispose();
    }
  })();
  worstGradient(policy, weighted, "policyStep with routedExperts");
  // Without replay the gradients differ: the argument is not ignored.
  const free = await gradientsOf((m) => m.trainStep(tokens, cu, ones, predicted));
  const router = (g: NamedHostTensor[]) =>
    (g.find((t) => t.name === "model.layers.0.mlp.gate.weight")?.data ?? new Float32Array()) as Float32Array;
  assert.ok(relativeDiff(router(free), router(trained)) > 1e-3);
});

test("router stats: tokens × topK per layer, entropy, imbalance, reset after reading", async () => {
  for (const name of ["qwen3_moe_mlp_only", "deepseek_v3_moonlight"]) {
    const ref = reference(name);
    const model = create(name);
    try {
      assert.deepEqual(model.routerStats(), { tokens: 0, layers: [] });
      const tokens = new Int32Array(ref.tokens);
      const cu = new Int32Array(ref.cuSeqlens);
      await model.logprobs(tokens, cu);
      await model.logprobs(tokens, cu);
      const stats = model.routerStats();
      const { layers, experts, topK } = model.moe;
      assert.equal(stats.tokens, 2 * tokens.length);
      assert.equal(stats.layers.length, layers);
      for (const layer of stats.layers) {
        assert.equal(layer.tokensPerExpert.length, experts);
        assert.equal(
          layer.tokensPerExpert.reduce((a, b) => a + b, 0),
          stats.tokens * topK,
        );
        assert.ok(layer.loadImbalance >= 1 && layer.loadImbalance <= experts / topK);
        assert.ok(layer.entropy > 0 && layer.entropy <= Math.log(experts) + 1e-6);
        assert.equal(layer.droppedTokens, 0);
      }
      assert.deepEqual(model.routerStats(), { tokens: 0, layers: [] });
      // Under replay the counts are exactly those of the replayed experts (free rows filled in).
      const routed = new Int32Array(ref.routedExperts);
      for (let row = 0; row < routed.length; row += topK) {
        if (routed[row] === -1) for (let j = 0; j < topK; j++) routed[row + j] = j;
      }
      await model.logprobs(tokens, cu, 1, 1024, routed);
      const expected = Array.from({ length: layers }, () => new Int32Array(experts));
      routed.forEach((e, i) => {
        const layer = expected[Math.floor(i / topK) % layers];
        if (layer) layer[e] = (layer[e] ?? 0) + 1;
      });
      assert.deepEqual(
        model.routerStats().layers.map((l) => l.tokensPerExpert),
        expected,
      );
    } finally {
      model.dispose();
    }
  }
});

test("grouped GEMM experts (as on CUDA) equal the per-expert loop", async (t) => {
  for (const name of ["qwen3_moe_mlp_only", "deepseek_v3_qlora_yarn"]) {
    const ref = reference(name);
    const model = create(name);
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    const weights = new Float32Array(ref.lossWeights);
    try {
      const loop = await model.lossBackward(tokens, cu, weights, ref.temperature, 1024);
      const loopLogprobs = await model.logprobs(tokens, cu);
      process.env.TILLER_MOE_EXPERTS = "grouped";
      const grouped = await model.lossBackward(tokens, cu, weights, ref.temperature, 1024);
      const groupedLogprobs = await model.logprobs(tokens, cu);
      const logprob = maxAbsDiff(groupedLogprobs.logprobs, loopLogprobs.logprobs);
      const gradient = worstGradient(grouped.gradients, loop.gradients, `${name} grouped`);
      t.diagnostic(`${name}: grouped vs loop logprob ${logprob}, gradient ${gradient}`);
      assert.ok(logprob <= 1e-5);
    } finally {
      delete process.env.TILLER_MOE_EXPERTS;
      model.dispose();
    }
  }
});

test("multi-token-prediction layers in a DeepSeek folder are skipped", async () => {
  const name = "deepseek_v3_qlora_yarn";
  const ref = reference(name);
  const model = await Model.load(join(caseDir(name), "hf_mtp"));
  try {
    const { logprobs } = await model.logprobs(new Int32Array(ref.tokens), new Int32Array(ref.cuSeqlens));
    assert.ok(maxAbsDiff(logprobs, ref.logprobs) <= 1e-4);
  } finally {
    model.dispose();
  }
});

test("bad routing arguments name the field", async () => {
  const ref = reference("mixtral");
  const model = create("mixtral");
  try {
    const tokens = new Int32Array(ref.tokens);
    const cu = new Int32Array(ref.cuSeqlens);
    const { layers, topK } = model.moe;
    assert.throws(
      () => model.logprobs(tokens, cu, 1, 1024, new Int32Array(3)),
      /routedExperts: has 3 entries, expected/,
    );
    const routed = new Int32Array(tokens.length * layers * topK).fill(-1);
    routed[0] = 9;
    routed[1] = 0;
    assert.throws(
      () => model.logprobs(tokens, cu, 1, 1024, routed),
      /routedExperts: token 0, MoE layer 0 has \[9, 0\]/,
    );
    routed[0] = 0;
    assert.throws(() => model.logprobs(tokens, cu, 1, 1024, routed), /expected 2 distinct ids in 0..3/);
    assert.throws(
      () => model.generate([new Int32Array([1])], { recordExperts: 1 as unknown as boolean }),
      /recordExperts: 1 must be a boolean/,
    );
    const bad = { ...config("mixtral"), num_experts_per_tok: 5 };
    assert.throws(
      () => Model.create(bad, readTensors(caseDir("mixtral"), "weights")),
      /num_experts_per_tok \(5\) must be in 1..4/,
    );
  } finally {
    model.dispose();
  }
});
