// Controller lifetimes with local workers, as real processes: no orphans when the controller is
// killed, a clean stop on SIGINT and SIGTERM, and the embedded default that a second process (a
// restarted kernel) attaches to.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { connect } from "../../src/index.js";
import { repoRoot } from "../../src/native/binding.js";
import { tempDir } from "../helpers/python.js";
import { alive, killAll, killPid, node, tiller, tinyLlama, waitFor } from "../helpers/runtime.js";

const dirs: { cleanup: () => void }[] = [];
const extraPids: number[] = [];
after(() => {
  killAll();
  for (const pid of extraPids) killPid(pid);
  for (const d of dirs) d.cleanup();
});

function home(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d.path;
}

async function startLocal(cpuWorkers: number) {
  const address = `ipc://${home("life")}/c.sock`;
  const controller = tiller(["controller", "--bind", address, "--cpu", String(cpuWorkers)]);
  const cluster = await connect(address, { timeoutMs: 20_000 });
  const state = await cluster.waitForWorkers(cpuWorkers, 30_000);
  return { controller, cluster, workerPids: state.workers.map((w) => w.pid) };
}

test("killing the controller leaves no worker process behind", { timeout: 60_000 }, async () => {
  const { controller, cluster, workerPids } = await startLocal(2);
  cluster.close();
  assert.equal(workerPids.length, 2);
  killPid(controller.pid, "SIGKILL");
  await waitFor("local workers to exit", () => workerPids.every((p) => !alive(p)) || undefined, 5000);
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  test(`${signal} stops the controller and its workers cleanly`, { timeout: 60_000 }, async () => {
    const { controller, cluster, workerPids } = await startLocal(1);
    cluster.close();
    killPid(controller.pid, signal);
    assert.equal(await controller.exited, 0, controller.output());
    assert.ok(
      workerPids.every((p) => !alive(p)),
      "workers are gone when the controller has exited",
    );
  });
}

test("connect() starts the local controller; a second process reattaches and sees its state", {
  timeout: 90_000,
}, async () => {
  const tillerHome = home("embedded");
  const previous = process.env.TILLER_HOME;
  process.env.TILLER_HOME = tillerHome;
  try {
    const first = await connect(undefined, { controllerArgs: ["--cpu", "1"], timeoutMs: 30_000 });
    assert.equal(first.started, true);
    const state = await first.waitForWorkers(1, 30_000);
    extraPids.push(state.pid, ...state.workers.map((w) => w.pid));
    const { config, tensors } = tinyLlama(3);
    await first.run("model.load", { name: "policy", config, tensors });
    first.close(); // the kernel goes away; the controller stays

    const second = node(join(repoRoot, "dist", "tests", "helpers", "attach-client.js"), [], {
      TILLER_HOME: tillerHome,
    });
    assert.equal(await second.exited, 0, second.output());
    const seen = JSON.parse(second.output().trim().split("\n").at(-1) ?? "{}");
    assert.equal(seen.started, false, "attached, did not start another");
    assert.equal(seen.state.pid, state.pid);
    assert.deepEqual(seen.state.workers[0].models, ["policy"]);

    const again = await connect(undefined, { start: false });
    await again.shutdown();
    again.close();
    await waitFor(
      "the controller and worker to exit",
      () => extraPids.every((p) => !alive(p)) || undefined,
      10_000,
    );
    assert.equal(
      existsSync(join(tillerHome, "controller.json")),
      false,
      "the record is removed on a clean stop",
    );
  } finally {
    if (previous === undefined) delete process.env.TILLER_HOME;
    else process.env.TILLER_HOME = previous;
  }
});
