// The set-up script's decisions: which Python, whether to make .venv, CPU or CUDA build.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  chooseCuda,
  choosePython,
  type PythonProbe,
  probePython,
  readSetupEnv,
  torchAtLeast,
} from "../../scripts/setup.js";

const withTorch = (python: string, version: string): PythonProbe => ({
  python,
  version: "3.11.7",
  torch: { version, dir: "/x/torch", cudaVersion: "13.0", cxx11Abi: true },
  packages: {},
});
const noTorch = (python: string): PythonProbe => ({ python, version: "3.11.7", packages: {} });

test("torch version comparison", () => {
  assert.equal(torchAtLeast("2.4.0", [2, 4]), true);
  assert.equal(torchAtLeast("2.11.0", [2, 4]), true);
  assert.equal(torchAtLeast("2.3.1", [2, 4]), false);
  assert.equal(torchAtLeast("1.13.1", [2, 4]), false);
  assert.equal(torchAtLeast("3.0.0", [2, 4]), true);
  assert.equal(torchAtLeast("garbage", [2, 4]), false);
});

test("python3 with torch is used", () => {
  const d = choosePython({}, { system: withTorch("/usr/bin/python3", "2.11.0") }, "/r/.venv");
  assert.deepEqual(d, {
    action: "use",
    python: "/usr/bin/python3",
    reason: "python3 on PATH has torch",
    torchVersion: "2.11.0",
  });
});

test("no torch anywhere: create .venv, saying why", () => {
  assert.deepEqual(choosePython({}, { system: noTorch("/usr/bin/python3") }, "/r/.venv"), {
    action: "create-venv",
    venv: "/r/.venv",
    reason: "python3 has no torch",
  });
  assert.equal((choosePython({}, {}, "/r/.venv") as { reason: string }).reason, "no python3 on PATH");
  const old = choosePython({}, { system: withTorch("/usr/bin/python3", "2.3.0") }, "/r/.venv");
  assert.deepEqual(old, {
    action: "create-venv",
    venv: "/r/.venv",
    reason: "python3 has torch 2.3.0 (< 2.4)",
  });
});

test("an existing .venv with torch is reused (idempotent)", () => {
  const d = choosePython(
    {},
    { system: noTorch("/usr/bin/python3"), venv: withTorch("/r/.venv/bin/python", "2.11.0") },
    "/r/.venv",
  );
  assert.equal(d.action, "use");
  assert.equal((d as { python: string }).python, "/r/.venv/bin/python");
});

test("TILLER_PYTHON wins, and failing it is an error, not a fallback", () => {
  const env = { TILLER_PYTHON: "/opt/py" };
  const sys = withTorch("/usr/bin/python3", "2.11.0");
  assert.equal(
    choosePython(env, { explicit: withTorch("/opt/py", "2.5.0"), system: sys }, "/v").action,
    "use",
  );
  assert.deepEqual(choosePython(env, { explicit: noTorch("/opt/py"), system: sys }, "/v"), {
    action: "fail",
    reason: "TILLER_PYTHON=/opt/py cannot import torch",
  });
  assert.match(
    (choosePython(env, { explicit: { python: "/opt/py", packages: {} } }, "/v") as { reason: string }).reason,
    /does not run/,
  );
  assert.match(
    (choosePython(env, { explicit: withTorch("/opt/py", "2.1.0") }, "/v") as { reason: string }).reason,
    /has torch 2.1.0; tiller needs ≥ 2.4/,
  );
});

test("CUDA build only with a CUDA torch and nvcc", () => {
  assert.equal(chooseCuda({}, "13.0", "/usr/local/cuda/bin/nvcc").cuda, true);
  assert.deepEqual(chooseCuda({}, "13.0", null), {
    cuda: false,
    reason: "torch is built for CUDA 13.0, but there is no nvcc",
  });
  assert.equal(chooseCuda({}, null, "/usr/bin/nvcc").cuda, false);
  assert.equal(chooseCuda({ TILLER_CUDA: "0" }, "13.0", "/usr/bin/nvcc").cuda, false);
  assert.throws(() => chooseCuda({ TILLER_CUDA: "1" }, null, "/usr/bin/nvcc"), /CPU-only build/);
  assert.throws(() => chooseCuda({ TILLER_CUDA: "1" }, "13.0", null), /nvcc was not found/);
});

test("probing a real Python: the one setup chose has torch; a missing one has nothing", () => {
  const env = readSetupEnv();
  const probe = probePython(env.python);
  assert.equal(probe.torch?.version, env.torchVersion);
  assert.ok(probe.torch?.dir.endsWith("torch"));
  assert.deepEqual(probePython("/nonexistent/python3"), { python: "/nonexistent/python3", packages: {} });
});
