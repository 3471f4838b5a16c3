// The runtime subcommands: `tiller controller`, `tiller worker`, `tiller keys`.

import { join } from "node:path";
import { controllerLogFile, controllerRecordFile, defaultAddress, tillerHome } from "../client/home.js";
import type { LocalWorkers } from "../controller/pool.js";
import { Controller, processAlive, readControllerRecord } from "../controller/server.js";
import { engineInfo } from "../native/engine.js";
import {
  type CurveClientKeys,
  readAllowList,
  readKeyPair,
  readPublicKey,
  writeKeyPair,
} from "../protocol/keys.js";
import { runWorker } from "../worker/main.js";

/** `--name value` flags (repeatable ones collect every value) and bare `--switch`es. */
function parseFlags(args: string[], switches: string[]): Map<string, string[]> {
  const flags = new Map<string, string[]>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (!arg.startsWith("--")) throw new Error(`unexpected argument '${arg}'`);
    const name = arg.slice(2);
    let value = "";
    if (!switches.includes(name)) {
      const next = args[i + 1];
      if (next === undefined || next.startsWith("--")) throw new Error(`--${name} needs a value`);
      value = next;
      i++;
    } else if (args[i + 1] !== undefined && /^\d+$/.test(args[i + 1] as string)) {
      value = args[++i] as string; // `--cpu 2`: a switch with an optional count
    }
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  return flags;
}

function one(flags: Map<string, string[]>, name: string): string | undefined {
  return flags.get(name)?.at(-1);
}

function count(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${flag}: '${text}' must be a non-negative integer`);
  return n;
}

/** --gpus LIST, --cpu [N], --workers N (join by address), else every visible GPU or one CPU worker. */
function localWorkers(flags: Map<string, string[]>): { local: LocalWorkers; worldSize?: number } {
  const chosen = ["gpus", "cpu", "workers"].filter((f) => flags.has(f));
  if (chosen.length > 1)
    throw new Error(`choose one of --workers, --gpus, --cpu (found --${chosen.join(", --")})`);
  const gpus = one(flags, "gpus");
  if (gpus !== undefined) return { local: { kind: "gpu", gpus: gpus.split(",").filter(Boolean) } };
  if (flags.has("cpu"))
    return { local: { kind: "cpu", count: count(one(flags, "cpu") || "1", "--cpu") ?? 1 } };
  const joined = count(one(flags, "workers"), "--workers");
  if (joined !== undefined) return { local: { kind: "none" }, worldSize: joined };
  const visible = process.env.CUDA_VISIBLE_DEVICES;
  if (visible) return { local: { kind: "gpu", gpus: visible.split(",").filter(Boolean) } };
  const cudaDevices = engineInfo()
    .devices.filter((d) => d.device.startsWith("cuda"))
    .map((d) => d.device.split(":")[1] ?? "0");
  return cudaDevices.length > 0
    ? { local: { kind: "gpu", gpus: cudaDevices } }
    : { local: { kind: "cpu", count: 1 } };
}

export async function controller(args: string[]): Promise<void> {
  const flags = parseFlags(args, ["cpu"]);
  const bind = one(flags, "bind");
  const home = tillerHome();
  const stateFile = bind ? undefined : controllerRecordFile(home);
  if (stateFile) {
    const running = readControllerRecord(stateFile);
    if (running && running.pid !== process.pid && processAlive(running.pid)) {
      throw new Error(
        `a controller already runs here (pid ${running.pid}, ${running.address}); stop it first`,
      );
    }
  }
  const keyFile = one(flags, "key");
  const allow = flags.get("allow") ?? [];
  const allowWorkers = flags.get("allow-workers") ?? [];
  if ((keyFile === undefined) !== (allow.length === 0)) {
    throw new Error(
      "CURVE needs both --key SERVER.key and --allow PUBLIC_KEYS (files, folders of .pub, or keys)",
    );
  }
  if (allowWorkers.length > 0 && keyFile === undefined) {
    throw new Error("--allow-workers needs CURVE: give --key SERVER.key and --allow CLIENT_KEYS too");
  }
  const curve = keyFile
    ? {
        ...readKeyPair(keyFile),
        allowedPublicKeys: readAllowList(allow),
        allowedWorkerKeys: allowWorkers.length > 0 ? readAllowList(allowWorkers) : [],
      }
    : undefined;
  const shared = curve?.allowedPublicKeys.filter((k) => curve.allowedWorkerKeys.includes(k)) ?? [];
  if (shared.length > 0) {
    throw new Error(
      `--allow and --allow-workers share the key ${shared[0]}: give workers their own keys (\`tiller keys\`), ` +
        "so that a client key cannot join as a worker",
    );
  }
  const { local, worldSize } = localWorkers(flags);
  const ms = (name: string) => count(one(flags, name), `--${name}`);
  const c = await Controller.start({
    bind: bind ?? defaultAddress(home),
    local,
    ...(worldSize !== undefined ? { worldSize } : {}),
    ...(curve ? { curve } : {}),
    ...(flags.has("root") ? { roots: flags.get("root") } : {}),
    ...(flags.has("reward-root") ? { rewardRoots: flags.get("reward-root") } : {}),
    ...(bind ? {} : { privateDir: home }),
    ...(ms("heartbeat-ms") ? { heartbeatMs: ms("heartbeat-ms") } : {}),
    ...(ms("heartbeat-timeout-ms") ? { heartbeatTimeoutMs: ms("heartbeat-timeout-ms") } : {}),
    ...(ms("controller-timeout-ms") ? { controllerTimeoutMs: ms("controller-timeout-ms") } : {}),
    ...(ms("max-message-bytes") ? { maxMessageBytes: ms("max-message-bytes") } : {}),
    ...(stateFile ? { stateFile } : {}),
  });
  // Signals are handled before anything is printed: whoever reads the first line may stop the
  // controller at once, and it must then stop its workers rather than die with them running.
  const stop = (signal: string) => {
    console.log(`tiller controller: ${signal}, stopping workers`);
    void c.shutdown();
  };
  process.once("SIGINT", () => stop("SIGINT"));
  process.once("SIGTERM", () => stop("SIGTERM"));
  const what =
    local.kind === "cpu"
      ? `${local.count} CPU worker(s)`
      : local.kind === "gpu"
        ? `GPUs ${local.gpus.join(",")}`
        : `${worldSize} joining worker(s)`;
  console.log(
    `tiller controller ${process.pid} at ${c.address}: ${what}${stateFile ? `; log ${controllerLogFile(home)}` : ""}`,
  );
  for (const warning of c.warnings) console.error(`tiller controller: warning: ${warning}`);
  if (c.access.confined) {
    console.log(
      `tiller controller: remote clients are confined to ${c.access.roots.join(", ")} ` +
        `(reward modules from ${c.access.rewardRoots.join(", ")})`,
    );
  }
  await c.stopped;
}

export async function worker(args: string[]): Promise<void> {
  const flags = parseFlags(args, ["exit-with-stdin"]);
  const address = one(flags, "controller");
  if (!address) throw new Error("--controller ADDR is needed (the address the controller was bound to)");
  let curve: CurveClientKeys | undefined;
  const keyFile = one(flags, "key");
  const serverKey = one(flags, "server-key");
  if (keyFile || serverKey) {
    if (!keyFile || !serverKey)
      throw new Error("CURVE needs both --key WORKER.key and --server-key SERVER.pub");
    curve = { ...readKeyPair(keyFile), serverPublicKey: readPublicKey(serverKey) };
  } else if (process.env.TILLER_WORKER_CURVE) {
    curve = JSON.parse(process.env.TILLER_WORKER_CURVE) as CurveClientKeys;
  }
  // Launchers say which rank a process is: torchrun-style RANK, Slurm's SLURM_PROCID.
  const env = process.env;
  const rank = count(one(flags, "rank") ?? env.TILLER_RANK ?? env.RANK ?? env.SLURM_PROCID, "--rank");
  const host = one(flags, "host");
  const code = await runWorker({
    controller: address,
    ...(curve ? { curve } : {}),
    ...(rank !== undefined ? { rank } : {}),
    ...(host ? { host } : {}),
    exitWithStdin: flags.has("exit-with-stdin"),
  });
  process.exit(code);
}

export async function keys(args: string[]): Promise<void> {
  const flags = parseFlags(args, []);
  const dir = one(flags, "dir") ?? join(tillerHome(), "keys");
  const name = one(flags, "name") ?? "tiller";
  const { secretFile, publicFile } = writeKeyPair(dir, name);
  console.log(`secret key pair: ${secretFile} (keep it private)\npublic key:      ${publicFile}`);
  console.log(`public key text: ${readPublicKey(publicFile)}`);
}
