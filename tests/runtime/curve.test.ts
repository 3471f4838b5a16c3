// CURVE on a non-loopback bind (tcp://0.0.0.0, reached through 127.0.0.1 only): refused without
// keys; only clients whose public key was allowed get answers; local workers join with the
// controller's own key; a client key does not open the worker socket; remote clients are confined
// to the controller's roots (paths, reward modules) and get FORBIDDEN beyond them.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import * as zmq from "zeromq";
import { connect, type TillerError } from "../../src/index.js";
import { endpointsOf } from "../../src/protocol/endpoints.js";
import { applyClientKeys, readKeyPair, readPublicKey } from "../../src/protocol/keys.js";
import { tempDir } from "../helpers/python.js";
import { freePortTriple, killAll, type Spawned, tiller } from "../helpers/runtime.js";

const dir = tempDir("curve");
let port = 0;
let controller: Spawned;

async function keys(name: string): Promise<void> {
  const made = tiller(["keys", "--dir", dir.path, "--name", name]);
  assert.equal(await made.exited, 0, made.output());
}

before(async () => {
  await Promise.all([keys("server"), keys("client"), keys("intruder"), keys("worker")]);
  port = await freePortTriple();
});

after(() => {
  killAll();
  dir.cleanup();
});

test("binding beyond loopback without keys is refused", { timeout: 30_000 }, async () => {
  const refused = tiller(["controller", "--bind", `tcp://0.0.0.0:${port}`, "--cpu"]);
  assert.equal(await refused.exited, 1);
  assert.match(refused.output(), /CURVE keys/);
});

test("only a client with an allowed key talks to a CURVE controller", { timeout: 60_000 }, async () => {
  controller = tiller([
    "controller",
    "--bind",
    `tcp://0.0.0.0:${port}`,
    "--cpu",
    "--key",
    join(dir.path, "server.key"),
    "--allow",
    join(dir.path, "client.pub"),
    "--allow-workers",
    join(dir.path, "worker.pub"),
    "--root",
    join(dir.path, "root"),
  ]);
  mkdirSync(join(dir.path, "root"), { recursive: true });
  const serverPublicKey = readPublicKey(join(dir.path, "server.pub"));
  const address = `tcp://127.0.0.1:${port}`;
  const allowed = await connect(address, {
    curve: { ...readKeyPair(join(dir.path, "client.key")), serverPublicKey },
    timeoutMs: 20_000,
  });
  const state = await allowed.waitForWorkers(1, 30_000);
  assert.equal(state.workers[0]?.rank, 0, "the local worker joined through CURVE with the controller's key");
  assert.equal(((await allowed.call("echo", { x: 1 })) as { x: number }).x, 1);

  const intruder = connect(address, {
    curve: { ...readKeyPair(join(dir.path, "intruder.key")), serverPublicKey },
    timeoutMs: 1500,
  });
  await assert.rejects(intruder, (e: TillerError) => e.code === "TIMEOUT");
  const plain = connect(address, { timeoutMs: 1500 });
  await assert.rejects(plain, (e: TillerError) => e.code === "TIMEOUT");

  // The worker socket: a client's key is refused there (no answer), a worker's key is let in (the
  // controller answers its join, here with a refusal as its one rank is taken).
  const workerSocket = async (name: string): Promise<string | undefined> => {
    const socket = new zmq.Dealer({ linger: 0, receiveTimeout: 1500 });
    applyClientKeys(socket, { ...readKeyPair(join(dir.path, `${name}.key`)), serverPublicKey });
    socket.connect(endpointsOf(address).workers);
    const hello = {
      type: "join",
      pid: process.pid,
      hostname: "x",
      host: "127.0.0.1",
      device: "cpu",
      memory: {},
    };
    await socket.send(JSON.stringify(hello));
    try {
      const [reply] = await socket.receive();
      return String(reply);
    } catch {
      return undefined;
    } finally {
      socket.close();
    }
  };
  assert.equal(await workerSocket("client"), undefined, "a client key does not open the worker socket");
  assert.match((await workerSocket("worker")) ?? "", /"type":"refuse".*ranks are taken/);

  // Confined: paths outside the roots and reward code that is not a file under a reward root.
  const forbidden = (field: RegExp) => (e: TillerError) =>
    e.code === "FORBIDDEN" && field.test(e.field ?? "");
  await assert.rejects(
    allowed.run("model.save", { name: "m", dir: "/tmp/tiller-anywhere" }),
    forbidden(/^args\.args\.dir$/),
  );
  await assert.rejects(
    allowed.run("model.loadOptimizer", { name: "m", file: "/etc/passwd" }),
    forbidden(/^args\.args\.file$/),
  );
  await assert.rejects(
    allowed.run("dist.init", {
      rank: 0,
      worldSize: 1,
      storeHost: "198.51.100.7",
      storePort: 1,
      backend: "gloo",
    }),
    forbidden(/^args\.command$/),
  );
  const root = join(dir.path, "root");
  const config = {
    name: "remote",
    runDir: join(root, "run"),
    model: { path: join(root, "model") },
    data: { train: join(root, "train.jsonl"), maxPromptTokens: 8 },
    promptsPerStep: 1,
    rollout: { samplesPerPrompt: 2, maxResponseTokens: 2 },
    tokensPerMicroBatch: 64,
    optimizer: { lr: 1e-3 },
    totalSteps: 1,
  };
  await assert.rejects(
    allowed.call("experiment.create", {
      config: {
        ...config,
        reward: { fn: { module: "data:text/javascript,export const f=()=>1", exportName: "f" } },
      },
    }),
    forbidden(/^config\.reward\.fn\.module$/),
  );
  await assert.rejects(
    allowed.call("experiment.create", { config: { ...config, model: { path: "/usr/share" } } }),
    forbidden(/^config\.model\.path$/),
  );
  await assert.rejects(allowed.call("experiment.create", { resume: "/" }), forbidden(/^args\.resume$/));

  await allowed.shutdown();
  allowed.close();
  assert.equal(await controller.exited, 0, controller.output());
});
