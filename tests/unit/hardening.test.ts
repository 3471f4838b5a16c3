// The pieces of issue 16 that hold no process: what a confined (remote) client may reach, HF token
// ids that are null, checkpoint manifests that hash every file, stale half-written checkpoint
// folders, and the error codes a user can act on.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Access, AccessError } from "../../src/controller/access.js";
import { errorBody } from "../../src/controller/server.js";
import { writeTinyModel } from "../../src/rl/tasks/next-digit.js";
import { Tokenizer } from "../../src/tokenizer/tokenizer.js";
import { removeStalePartials, verifyCheckpoint, writeManifest } from "../../src/util/checkpoint.js";
import { UserError } from "../../src/util/errors.js";
import { tokenIdList } from "../../src/util/token-ids.js";
import { tempDir } from "../helpers/python.js";

test("a confined client reaches only paths under its roots, symlinks followed", () => {
  const dir = tempDir("access");
  try {
    const root = join(dir.path, "root");
    mkdirSync(join(root, "models"), { recursive: true });
    symlinkSync("/etc", join(root, "escape"));
    const access = new Access({ confined: true, roots: [root], rewardRoots: [] });
    assert.equal(access.path("model.path", join(root, "models")), join(root, "models"));
    assert.equal(
      access.path("runDir", join(root, "runs", "new", "deeper")),
      join(root, "runs", "new", "deeper"),
    );
    for (const outside of [
      "/etc/passwd",
      join(root, "..", "other"),
      join(root, "escape", "passwd"),
      `${root}-sibling`,
    ]) {
      assert.throws(
        () => access.path("args.args.file", outside),
        (e: Error) =>
          e instanceof AccessError && e.code === "FORBIDDEN" && e.message.startsWith("args.args.file:"),
        outside,
      );
    }
    // A local client keeps the rights of the user who started the controller.
    const local = new Access({ confined: false, roots: [root], rewardRoots: [] });
    assert.equal(local.path("x", "/etc/passwd"), "/etc/passwd");
  } finally {
    dir.cleanup();
  }
});

test("a confined client loads reward code only from reward roots: data: and other URLs are refused", () => {
  const dir = tempDir("reward-access");
  try {
    const rewards = join(dir.path, "rewards");
    mkdirSync(rewards);
    writeFileSync(join(rewards, "mine.mjs"), "export const score = () => 1;\n");
    writeFileSync(join(dir.path, "elsewhere.mjs"), "export const score = () => 1;\n");
    const access = new Access({ confined: true, roots: [dir.path], rewardRoots: [rewards] });
    assert.equal(
      access.rewardModule("reward.fn.module", join(rewards, "mine.mjs")),
      join(rewards, "mine.mjs"),
    );
    assert.ok(access.rewardModule("m", `file://${join(rewards, "mine.mjs")}`));
    for (const module of [
      "data:text/javascript,process.exit(1)",
      "https://example.com/x.mjs",
      "node:child_process",
      "some-package",
      join(dir.path, "elsewhere.mjs"),
    ]) {
      assert.throws(
        () => access.rewardModule("reward.fn.module", module),
        (e: Error) => e instanceof AccessError && e.field === "reward.fn.module",
        module,
      );
    }
    // Unconfined, anything goes (the user's own code).
    assert.ok(
      new Access({ confined: false, roots: [], rewardRoots: [] }).rewardModule("m", "data:text/javascript,1"),
    );
  } finally {
    dir.cleanup();
  }
});

test("HF token ids: null means none, in a list too; anything else that is not an id is refused naming the field", () => {
  assert.deepEqual(tokenIdList(null, "eos_token_id"), []);
  assert.deepEqual(tokenIdList(undefined, "eos_token_id"), []);
  assert.deepEqual(tokenIdList(7, "eos_token_id"), [7]);
  assert.deepEqual(tokenIdList([1, null, 2], "eos_token_id"), [1, 2]);
  assert.throws(() => tokenIdList("2", "eos_token_id"), /eos_token_id: "2" is not a token id/);
  assert.throws(() => tokenIdList([1, -3], "eos_token_id"), /eos_token_id\[1\]: -3 is not a token id/);
});

test("a model folder whose generation_config says eos_token_id: null stops on its eos token only (not on id 0)", async () => {
  const dir = tempDir("eos-null");
  try {
    await writeTinyModel(dir.path, { seed: 1 });
    const before = Tokenizer.fromFolder(dir.path).eosTokenIds;
    // transformers 5.x writes null for a token a model does not have.
    writeFileSync(
      join(dir.path, "generation_config.json"),
      JSON.stringify({ eos_token_id: null, bos_token_id: null, pad_token_id: null }),
    );
    const after = Tokenizer.fromFolder(dir.path).eosTokenIds;
    assert.ok(!after.includes(0) || before.includes(0), `eos ids ${after} must not gain id 0`);
    assert.ok(after.every((id) => before.includes(id)));
  } finally {
    dir.cleanup();
  }
});

/** A checkpoint-shaped folder with a model file of `modelBytes` bytes. */
function fakeCheckpoint(dir: string, modelBytes: number): void {
  mkdirSync(join(dir, "model"), { recursive: true });
  writeFileSync(join(dir, "state.json"), '{"step": 1}\n');
  writeFileSync(join(dir, "metrics.arrow"), "m");
  writeFileSync(join(dir, "optimizer.safetensors"), "o");
  writeFileSync(join(dir, "model", "config.json"), "{}");
  const fd = openSync(join(dir, "model", "model.safetensors"), "w");
  const chunk = Buffer.alloc(1 << 20, 7);
  for (let left = modelBytes; left > 0; left -= chunk.length)
    writeSync(fd, chunk, 0, Math.min(left, chunk.length));
  closeSync(fd);
}

test("a checkpoint manifest hashes every file: one changed byte in a 20 MiB model file is refused", async () => {
  const dir = tempDir("manifest");
  try {
    const ckpt = join(dir.path, "step-000001");
    fakeCheckpoint(ckpt, 20 << 20);
    await writeManifest(ckpt);
    const manifest = JSON.parse(readFileSync(join(ckpt, "manifest.json"), "utf8"));
    assert.ok(manifest.files.every((f: { sha256?: string }) => /^[0-9a-f]{64}$/.test(f.sha256 ?? "")));
    await verifyCheckpoint(ckpt);
    const fd = openSync(join(ckpt, "model", "model.safetensors"), "r+");
    writeSync(fd, Buffer.from([8]), 0, 1, 17 << 20);
    closeSync(fd);
    await assert.rejects(verifyCheckpoint(ckpt), /model\/model.safetensors does not match its sha256/);
  } finally {
    dir.cleanup();
  }
});

test("a manifest that is {}, not complete, unhashed, or missing a required file is refused with a clear message", async () => {
  const dir = tempDir("manifest-bad");
  try {
    const ckpt = join(dir.path, "step-000001");
    fakeCheckpoint(ckpt, 16);
    await writeManifest(ckpt);
    const good = JSON.parse(readFileSync(join(ckpt, "manifest.json"), "utf8"));
    const cases: [unknown, RegExp][] = [
      [{}, /does not say complete: true/],
      [{ ...good, complete: false }, /does not say complete: true/],
      [{ complete: true, files: [] }, /lists no files/],
      [
        { ...good, files: good.files.map((f: object) => ({ ...f, sha256: undefined })) },
        /every file must be hashed/,
      ],
      [
        { ...good, files: good.files.filter((f: { file: string }) => f.file !== "optimizer.safetensors") },
        /does not list optimizer.safetensors/,
      ],
      [
        { ...good, files: [...good.files, { file: "../escape", size: 1, sha256: "0".repeat(64) }] },
        /not inside the checkpoint/,
      ],
    ];
    for (const [manifest, message] of cases) {
      writeFileSync(join(ckpt, "manifest.json"), JSON.stringify(manifest));
      await assert.rejects(
        verifyCheckpoint(ckpt),
        (e: Error) => e instanceof UserError && message.test(e.message),
        String(message),
      );
    }
  } finally {
    dir.cleanup();
  }
});

test("half-written checkpoint folders of a dead process are removed and named; a live writer's are kept", () => {
  const dir = tempDir("partials");
  try {
    const dead = spawnSync(process.execPath, [
      "-e",
      "process.stdout.write(String(process.pid))",
    ]).stdout.toString();
    mkdirSync(join(dir.path, `.step-000003.partial-${dead}`, "model"), { recursive: true });
    mkdirSync(join(dir.path, `.step-000004.partial-${process.pid}`));
    mkdirSync(join(dir.path, "step-000002"));
    const removed = removeStalePartials(dir.path);
    assert.equal(removed.length, 1);
    assert.match(removed[0] as string, new RegExp(`step-000003 by process ${dead} that did not finish`));
    assert.equal(existsSync(join(dir.path, `.step-000003.partial-${dead}`)), false);
    assert.equal(existsSync(join(dir.path, `.step-000004.partial-${process.pid}`)), true);
    assert.equal(existsSync(join(dir.path, "step-000002")), true);
  } finally {
    dir.cleanup();
  }
});

test("user mistakes answer with their own codes and fields, not INTERNAL", () => {
  assert.deepEqual(errorBody(new UserError("BUSY", "experiment is busy with run")), {
    code: "BUSY",
    message: "experiment is busy with run",
  });
  assert.deepEqual(errorBody(new UserError("NOT_FOUND", "/x: no such folder", "model.path")), {
    code: "NOT_FOUND",
    message: "model.path: /x: no such folder",
    field: "model.path",
  });
  const missing = Object.assign(new Error("ENOENT: no such file, open '/nope'"), { code: "ENOENT" });
  assert.equal(errorBody(missing).code, "NOT_FOUND");
  assert.equal(errorBody(new AccessError("args.dir", "outside")).code, "FORBIDDEN");
  assert.equal(errorBody(new Error("a bug")).code, "INTERNAL");
});
