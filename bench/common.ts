// Shared by the benchmarks: the result row and running a Python baseline script.
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { readSetupEnv, repoRoot } from "../scripts/setup.js";

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
  baseline: number;
  baselineName: string;
  ratio: number;
  detail: string;
}

/**
 * Runs bench/python/<script> with the set-up Python (and `env` added to the environment); returns
 * its last stdout line parsed as JSON.
 */
export function pythonBaseline<T>(
  script: string,
  args: (string | number)[],
  env: Record<string, string> = {},
): T {
  const out = execFileSync(
    readSetupEnv().python,
    [join(repoRoot, "bench", "python", script), ...args.map(String)],
    {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, HF_HUB_OFFLINE: "1", TOKENIZERS_PARALLELISM: "false", ...env },
    },
  ).toString();
  return JSON.parse(out.trim().split("\n").pop() ?? "null") as T;
}

/** A random-weight HF folder of a named shape, made once per machine under $TILLER_BENCH_DIR (or /tmp). */
export function benchModel(shape: string): string {
  const root = process.env.TILLER_BENCH_DIR ?? "/tmp/tiller-bench";
  const dir = join(root, shape);
  mkdirSync(root, { recursive: true });
  try {
    execFileSync("test", ["-f", join(dir, "config.json")]);
  } catch {
    pythonBaseline<number>("make_model.py", [shape, dir]);
  }
  return dir;
}
