// Runs the Python that setup chose (it has torch, transformers, safetensors) for reference
// computations in tests. Scripts live in tests/python/; outputs are exchanged through files.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";

/** The absolute path of a script in tests/python. */
export function pythonScript(name: string): string {
  return join(repoRoot, "tests", "python", name);
}

/** Runs `python tests/python/<name> ...args`, returning stdout; stderr is shown on failure. */
export function runPython(name: string, args: string[], options: { timeoutMs?: number } = {}): string {
  const env = readSetupEnv();
  try {
    return execFileSync(env.python, [pythonScript(name), ...args], {
      encoding: "utf8",
      timeout: options.timeoutMs ?? 300_000,
      env: { ...process.env, HF_HUB_OFFLINE: "1", TOKENIZERS_PARALLELISM: "false", OMP_NUM_THREADS: "2" },
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`python ${name} failed: ${e.message}\n${e.stderr ?? ""}`);
  }
}

/** A fresh temporary folder, removed by the returned cleanup. */
export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), `tiller-${prefix}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}
