// A client never waits for a dead controller: killed (the connection closes) or stopped (its
// heartbeats stop), every call in flight is rejected with CONTROLLER_LOST, save() included, and
// the next controller cleans the half-written checkpoint folder and says so. Files under
// TILLER_HOME are private whatever the umask, and addresses any local user can reach are named.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { defaultAddress } from "../../src/client/home.js";
import { connect, type TillerError } from "../../src/index.js";
import { repoRoot } from "../../src/native/binding.js";
import { writeNextDigitData, writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { tempDir } from "../helpers/python.js";
import { alive, freePortTriple, killAll, killPid, tiller, waitFor } from "../helpers/runtime.js";

const dirs: { cleanup: () => void }[] = [];
const others: ChildProcess[] = [];
after(() => {
  killAll();
  for (const child of others) child.kill("SIGKILL");
  for (const d of dirs) d.cleanup();
});

function folder(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d.path;
}

async function startController(cpuWorkers: number) {
  const address = `ipc://${folder("live")}/c.sock`;
  const controller = tiller(["controller", "--bind", address, "--cpu", String(cpuWorkers)]);
  const cluster = await connect(address, { timeoutMs: 20_000, heartbeatMs: 200, controllerTimeoutMs: 1500 });
  const state = await cluster.waitForWorkers(cpuWorkers, 30_000);
  return { controller, cluster, workerPids: state.workers.map((w) => w.pid) };
}

const lost = (e: TillerError) => e.code === "CONTROLLER_LOST" && /dropped/.test(e.message);

test("calls without timeoutMs are rejected with CONTROLLER_LOST when the controller is killed", {
  timeout: 60_000,
}, async () => {
  const { controller, cluster, workerPids } = await startController(1);
  try {
    const pending = cluster.run("debug.sleep", { ms: 60_000 });
    const status = cluster.status();
    await status;
    const killedAt = Date.now();
    killPid(controller.pid, "SIGKILL");
    await assert.rejects(pending, lost);
    const waited = Date.now() - killedAt;
    console.log(`the call in flight was rejected ${waited} ms after kill -9`);
    assert.ok(waited < 5000, `rejected after ${waited} ms`);
    // A call made now fails at once instead of waiting in ZeroMQ's queue for the next controller.
    await assert.rejects(cluster.status(), (e: TillerError) => e.code === "CONTROLLER_LOST");
    await waitFor("the worker to exit", () => workerPids.every((p) => !alive(p)) || undefined, 10_000);
  } finally {
    cluster.close();
  }
});

test("a stopped, silent controller is noticed by heartbeats: pending calls are rejected", {
  timeout: 60_000,
}, async () => {
  const { controller, cluster } = await startController(0);
  try {
    const pending = cluster.call("echo", { x: 1 }).then(() => cluster.run("debug.sleep", { ms: 1 }));
    await pending.catch(() => undefined); // no workers: the run fails fast; only liveness matters below
    killPid(controller.pid, "SIGSTOP");
    const stoppedAt = Date.now();
    await assert.rejects(cluster.call("echo", { y: 2 }), lost);
    const waited = Date.now() - stoppedAt;
    console.log(`a stopped controller was declared lost after ${waited} ms (timeout 1500 ms)`);
    assert.ok(waited >= 1000 && waited < 8000, `lost after ${waited} ms`);
  } finally {
    cluster.close();
    killPid(controller.pid, "SIGKILL");
  }
});

test("save() rejects when the controller dies mid-save (and the failed status refresh after a call is counted); the next start removes the half-written folder and says so", {
  timeout: 180_000,
}, async () => {
  const work = folder("save");
  const modelPath = join(work, "model");
  await writeTinyModel(modelPath, { seed: 2 });
  const dataFile = writeNextDigitData(join(work, "data"));
  const runDir = join(work, "run");
  const config = {
    name: "mid-save",
    runDir,
    seed: 1,
    model: { path: modelPath, dtype: "float32" as const },
    data: { train: dataFile, maxPromptTokens: 8 },
    promptsPerStep: 4,
    rollout: { samplesPerPrompt: 2, maxResponseTokens: 2 },
    tokensPerMicroBatch: 4096,
    optimizer: { lr: 1e-3 },
    totalSteps: 2,
  };
  const first = await startController(1);
  try {
    const exp = await first.cluster.experiment(config);
    // A listener that throws is logged and counted; the others still hear every event.
    let heard = 0;
    const offBad = first.cluster.on("experiment.progress", () => {
      throw new Error("a notebook bug");
    });
    const offGood = first.cluster.on("experiment.progress", () => {
      heard++;
    });
    await exp.step();
    await waitFor("progress events", () => (heard > 0 ? heard : undefined), 5000);
    assert.equal(first.cluster.listenerErrors, heard);
    offBad();
    offGood();
    const saving = exp.save();
    killPid(first.controller.pid, "SIGSTOP"); // wherever the save stands, it never finishes now
    await assert.rejects(saving, (e: TillerError) => e.code === "CONTROLLER_LOST");
    // The status refresh after a failed call is a logged, counted decision, not a swallowed error.
    const failures = exp.refreshFailures;
    await assert.rejects(exp.step(), (e: TillerError) => e.code === "CONTROLLER_LOST");
    assert.equal(exp.refreshFailures, failures + 1, "the failed refresh after step() is counted");
  } finally {
    first.cluster.close();
    killPid(first.controller.pid, "SIGKILL");
  }
  await waitFor("the first controller to be gone", () => !alive(first.controller.pid) || undefined, 10_000);
  // Whether or not the save had begun its folder, leave one as a killed save does.
  const partial = join(runDir, "checkpoints", `.step-000001.partial-${first.controller.pid}`);
  mkdirSync(join(partial, "model"), { recursive: true });
  const second = await startController(1);
  try {
    const again = await second.cluster.experiment(config);
    const status = await again.refresh();
    assert.equal(existsSync(partial), false, "the stale folder is gone");
    assert.ok(
      status.warnings.some((w) => w.includes(partial) && w.includes("did not finish")),
      `warnings: ${JSON.stringify(status.warnings)}`,
    );
  } finally {
    await second.cluster.shutdown();
    second.cluster.close();
  }
});

test("with umask 000 the controller's home is 0700 and its record and sockets 0600", {
  timeout: 60_000,
}, async () => {
  const home = join(folder("umask"), "home");
  const cli = join(repoRoot, "dist", "src", "cli", "main.js");
  const child = spawn(
    "sh",
    ["-c", 'umask 000; exec "$0" "$@"', process.execPath, cli, "controller", "--cpu", "0"],
    {
      env: { ...process.env, TILLER_HOME: home },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  others.push(child);
  const record = join(home, "controller.json");
  await waitFor("controller.json", () => existsSync(record) || undefined, 30_000);
  const mode = (path: string) => statSync(path).mode & 0o777;
  assert.equal(mode(home).toString(8), "700");
  assert.equal(mode(record).toString(8), "600");
  const socket = defaultAddress(home).slice("ipc://".length);
  for (const file of [socket, `${socket}.workers`, `${socket}.events`]) {
    assert.equal(mode(file).toString(8), "600", file);
  }
  child.kill("SIGTERM");
});

test("an abstract ipc address and a keyless loopback port are named at start as reachable by any local user", {
  timeout: 60_000,
}, async () => {
  const port = await freePortTriple();
  for (const [bind, expected] of [
    [`ipc://@tiller-test-${process.pid}`, /warning: .*abstract socket: file permissions do not apply/],
    [`tcp://127.0.0.1:${port}`, /warning: .*takes clients without keys: any user of this machine/],
  ] as const) {
    const c = tiller(["controller", "--bind", bind, "--cpu", "0"]);
    await waitFor(`the warning for ${bind}`, () => expected.test(c.output()) || undefined, 30_000);
    killPid(c.pid, "SIGTERM");
    assert.equal(await c.exited, 0, c.output());
  }
});
