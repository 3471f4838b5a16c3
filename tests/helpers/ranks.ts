// Starts ranks as separate Node processes (tests/helpers/dist-rank.ts), each printing one JSON line,
// and always ends them: on success, on failure and when the deadline passes.
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { repoRoot } from "../../scripts/setup.js";
import { ProcessGroup } from "../../src/index.js";
import type { RankConfig } from "./dist-rank.js";

export interface RankResult {
  rank: number;
  ok: boolean;
  error?: string;
  elapsedMs?: number;
  [key: string]: unknown;
}

/**
 * The gloo group a rank script opens from its config: its port, rank and world size, and a bounded
 * timeout (the config's, else `timeoutMs`) so a peer that never comes fails the rank fast.
 */
export function glooGroup(
  c: { port: number; rank: number; worldSize: number; timeoutMs?: number },
  timeoutMs = 20_000,
): Promise<ProcessGroup> {
  return ProcessGroup.create({
    port: c.port,
    rank: c.rank,
    worldSize: c.worldSize,
    backend: "gloo",
    timeoutMs: c.timeoutMs ?? timeoutMs,
  });
}

/** A TCP port that was free a moment ago (the OS picks it; the store binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() =>
        typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port")),
      );
    });
  });
}

/**
 * Runs one process per config (`entry`: a compiled script in dist/tests/helpers taking the config as
 * JSON in argv[2]) and resolves with their results, in config order. Rejects when any
 * process has not printed its result within deadlineMs (every child is killed then), or exits
 * without a result (its stderr is in the message).
 */
export async function runRanks(
  configs: (RankConfig | { rank: number })[],
  deadlineMs: number,
  env: NodeJS.ProcessEnv = {},
  entry = "dist-rank.js",
): Promise<RankResult[]> {
  const script = join(repoRoot, "dist", "tests", "helpers", entry);
  const children: ChildProcess[] = [];
  const killAll = () => {
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  let timer: NodeJS.Timeout | undefined;
  try {
    const results = configs.map((config) => {
      const child = spawn(process.execPath, [script, JSON.stringify(config)], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, OMP_NUM_THREADS: "1", ...env },
      });
      children.push(child);
      let stdout = "";
      let stderr = "";
      child.stdout?.on("data", (chunk) => {
        stdout += chunk;
      });
      child.stderr?.on("data", (chunk) => {
        stderr += chunk;
      });
      return new Promise<RankResult>((resolve, reject) => {
        child.once("error", reject);
        child.once("close", (code, signal) => {
          const line = stdout.trim().split("\n").pop() ?? "";
          try {
            resolve(JSON.parse(line) as RankResult);
          } catch {
            reject(
              new Error(
                `rank ${config.rank} exited (${code ?? signal}) without a result:\n${stdout}\n${stderr}`,
              ),
            );
          }
        });
      });
    });
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        killAll();
        reject(new Error(`ranks did not finish within ${deadlineMs} ms`));
      }, deadlineMs);
    });
    return await Promise.race([Promise.all(results), deadline]);
  } finally {
    clearTimeout(timer);
    killAll();
  }
}
