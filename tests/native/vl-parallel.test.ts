// Qwen2.5-VL under tensor parallelism (the language model split as the dense families, the vision
// tower replicated) against one device, on CPU worker processes over gloo in fp32: logprobs with
// images, gathered gradients, parameters after two AdamW updates, greedy generation with images.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Model } from "../../src/index.js";
import { maxAbsDiff, readTensors, relativeDiff } from "../helpers/parity.js";
import { runPython, tempDir } from "../helpers/python.js";
import { freePort, runRanks } from "../helpers/ranks.js";
import {
  runVlScenario,
  type VlParallelRankConfig,
  type VlScenarioResult,
} from "../helpers/vl-parallel-rank.js";

const TOLERANCE = 1e-5;
const dir = tempDir("vl-parallel");
const modelDir = join(dir.path, "model");
before(async () => {
  runPython("vl_reference.py", [dir.path]);
  const config = JSON.parse(readFileSync(join(dir.path, "config.json"), "utf8")) as Record<string, unknown>;
  const model = Model.create(config, readTensors(dir.path, "weights"));
  try {
    await model.save(modelDir);
  } finally {
    model.dispose();
  }
});
after(() => dir.cleanup());

test("TP2 with images equals one device: logprobs, gradients, updated parameters, greedy tokens", async () => {
  const single = await Model.load(modelDir);
  let ref: VlScenarioResult;
  try {
    ref = await runVlScenario(single, join(dir.path, "reference.json"));
  } finally {
    single.dispose();
  }
  const port = await freePort();
  const out = join(dir.path, "tp2.json");
  const configs: VlParallelRankConfig[] = [0, 1].map((rank) => ({
    port,
    rank,
    worldSize: 2,
    timeoutMs: 20_000,
    layout: { tensor: 2 },
    modelDir,
    reference: join(dir.path, "reference.json"),
    out,
  }));
  const results = await runRanks(configs, 150_000, {}, "vl-parallel-rank.js");
  for (const r of results) assert.equal(r.ok, true, `rank ${r.rank}: ${r.error}`);
  const got = JSON.parse(readFileSync(out, "utf8")) as VlScenarioResult;
  const figures = { logprob: maxAbsDiff(got.logprobs, ref.logprobs), gradient: 0, parameter: 0 };
  assert.deepEqual(Object.keys(got.gradients).sort(), Object.keys(ref.gradients).sort());
  for (const [name, g] of Object.entries(ref.gradients)) {
    const d = relativeDiff(got.gradients[name] ?? [], g);
    figures.gradient = Math.max(figures.gradient, d);
    assert.ok(d <= TOLERANCE, `gradient of ${name} differs by ${d} (relative)`);
  }
  for (const [name, p] of Object.entries(ref.parameters)) {
    const d = maxAbsDiff(got.parameters[name] ?? [], p);
    figures.parameter = Math.max(figures.parameter, d);
    assert.ok(d <= TOLERANCE, `parameter ${name} after 2 updates differs by ${d}`);
  }
  console.log(`qwen2.5-vl TP2 vs one device: ${JSON.stringify(figures)}`);
  assert.ok(figures.logprob <= TOLERANCE, `logprobs differ by ${figures.logprob}`);
  assert.deepEqual(got.generated, ref.generated, "greedy generation");
});
