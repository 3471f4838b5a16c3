// CURVE on a non-loopback bind (tcp://0.0.0.0, reached through 127.0.0.1 only): refused without
// keys; only clients whose public key was allowed get answers; local workers join with the
// controller's own key.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { connect, type TillerError } from "../../src/index.js";
import { readKeyPair, readPublicKey } from "../../src/protocol/keys.js";
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
  await Promise.all([keys("server"), keys("client"), keys("intruder")]);
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
  ]);
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

  await allowed.shutdown();
  allowed.close();
  assert.equal(await controller.exited, 0, controller.output());
});
