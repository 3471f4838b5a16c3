// `npm install` runs this after the TypeScript build: find (or make) a Python with PyTorch, build
// the native addon against that torch, register the tslab Jupyter kernel in a project-local path,
// and record what it found in .tiller/env.json. Safe to run again: every step checks first.
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { cpus } from "node:os";
import { basename, delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** PyTorch and friends, pinned to what the GPU machine runs (torch 2.11) and the HF reference. */
export const pinnedPackages = [
  "torch==2.11.0",
  "transformers==5.17.0",
  "safetensors",
  "numpy",
  "pyarrow",
  "pillow==13.0.0",
  "nbclient",
  "nbconvert",
  "ipykernel",
  "jupyter-client",
];
export const minimumTorch: [number, number] = [2, 4];

/** What probing one Python tells us. `torch` is undefined when it cannot import torch. */
export interface PythonProbe {
  python: string;
  version?: string;
  torch?: {
    version: string;
    dir: string;
    cudaVersion: string | null;
    cxx11Abi: boolean;
  };
  packages: Record<string, boolean>;
}

export type PythonDecision =
  | { action: "use"; python: string; reason: string; torchVersion: string }
  | { action: "create-venv"; venv: string; reason: string }
  | { action: "fail"; reason: string };

export function torchAtLeast(version: string, [major, minor]: [number, number]): boolean {
  const m = /^(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  const [a, b] = [Number(m[1]), Number(m[2])];
  return a > major || (a === major && b >= minor);
}

/**
 * Which Python to use. Order: $TILLER_PYTHON (must work, else fail: the user asked for it),
 * then python3 on PATH, then the project's .venv; if none has torch ≥ 2.4, create .venv.
 */
export function choosePython(
  env: { TILLER_PYTHON?: string },
  probes: { explicit?: PythonProbe; system?: PythonProbe; venv?: PythonProbe },
  venvDir: string,
): PythonDecision {
  const ok = (p?: PythonProbe) => p?.torch !== undefined && torchAtLeast(p.torch.version, minimumTorch);
  const min = minimumTorch.join(".");
  if (env.TILLER_PYTHON) {
    const p = probes.explicit;
    if (!p?.version) return { action: "fail", reason: `TILLER_PYTHON=${env.TILLER_PYTHON} does not run` };
    if (!p.torch) return { action: "fail", reason: `TILLER_PYTHON=${env.TILLER_PYTHON} cannot import torch` };
    if (!ok(p)) {
      return {
        action: "fail",
        reason: `TILLER_PYTHON=${env.TILLER_PYTHON} has torch ${p.torch.version}; tiller needs ≥ ${min}`,
      };
    }
    return { action: "use", python: p.python, reason: "TILLER_PYTHON", torchVersion: p.torch.version };
  }
  if (probes.system && ok(probes.system)) {
    return {
      action: "use",
      python: probes.system.python,
      reason: "python3 on PATH has torch",
      torchVersion: probes.system.torch?.version ?? "",
    };
  }
  if (probes.venv && ok(probes.venv)) {
    return {
      action: "use",
      python: probes.venv.python,
      reason: "the project's .venv has torch",
      torchVersion: probes.venv.torch?.version ?? "",
    };
  }
  const why = probes.system?.torch
    ? `python3 has torch ${probes.system.torch.version} (< ${min})`
    : probes.system?.version
      ? "python3 has no torch"
      : "no python3 on PATH";
  return { action: "create-venv", venv: venvDir, reason: why };
}

/** The native build: CUDA where torch is a CUDA build and nvcc exists, unless TILLER_CUDA says otherwise. */
export function chooseCuda(
  env: { TILLER_CUDA?: string },
  torchCudaVersion: string | null,
  nvcc: string | null,
): { cuda: boolean; reason: string } {
  if (env.TILLER_CUDA === "0") return { cuda: false, reason: "TILLER_CUDA=0" };
  if (env.TILLER_CUDA === "1") {
    if (!torchCudaVersion) throw new Error("TILLER_CUDA=1, but this torch is a CPU-only build");
    if (!nvcc) throw new Error("TILLER_CUDA=1, but nvcc was not found (set CUDA_HOME or put nvcc on PATH)");
    return { cuda: true, reason: "TILLER_CUDA=1" };
  }
  if (!torchCudaVersion) return { cuda: false, reason: "torch is a CPU-only build" };
  if (!nvcc)
    return { cuda: false, reason: `torch is built for CUDA ${torchCudaVersion}, but there is no nvcc` };
  return { cuda: true, reason: `torch CUDA ${torchCudaVersion} and ${nvcc}` };
}

const probeScript = `
import json, sys, importlib.util
out = {"version": sys.version.split()[0], "packages": {}}
for name in ["transformers", "safetensors", "nbclient", "nbconvert", "jupyter_client", "ipykernel", "pyarrow", "PIL"]:
    out["packages"][name] = importlib.util.find_spec(name) is not None
try:
    import os, torch
    out["torch"] = {"version": torch.__version__.split("+")[0], "dir": os.path.dirname(torch.__file__),
                    "cudaVersion": torch.version.cuda, "cxx11Abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI)}
except Exception:
    pass
print(json.dumps(out))
`;

export function probePython(python: string): PythonProbe {
  const r = spawnSync(python, ["-c", probeScript], { encoding: "utf8" });
  if (r.status !== 0 || !r.stdout) return { python, packages: {} };
  return { python, ...JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") };
}

export function findExecutable(name: string, extraDirs: string[] = []): string | null {
  for (const dir of [...(process.env.PATH ?? "").split(delimiter), ...extraDirs]) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

function say(message: string) {
  process.stdout.write(`[tiller setup] ${message}\n`);
}

function run(command: string, args: string[], options: { cwd?: string } = {}) {
  const r = spawnSync(command, args, { stdio: "inherit", ...options });
  if (r.status !== 0) {
    throw new Error(`\`${command} ${args.join(" ")}\` failed (exit ${r.status ?? r.signal})`);
  }
}

export interface SetupEnv {
  python: string;
  torchVersion: string;
  torchDir: string;
  torchCudaVersion: string | null;
  cuda: boolean;
  addon: string;
  jupyterPath: string | null;
  packages: Record<string, boolean>;
}

export const repoRoot = resolve(fileURLToPath(import.meta.url), "../../..");
export const envFile = join(repoRoot, ".tiller", "env.json");

/** Reads what setup recorded; throws a message saying to run setup when it has not run. */
export function readSetupEnv(): SetupEnv {
  if (!existsSync(envFile))
    throw new Error(`${envFile} is missing: run \`npm install\` (or \`npm run setup\`)`);
  return JSON.parse(readFileSync(envFile, "utf8")) as SetupEnv;
}

function resolvePython(): PythonProbe {
  const venvDir = join(repoRoot, ".venv");
  const venvPython = join(venvDir, "bin", "python");
  const env = { TILLER_PYTHON: process.env.TILLER_PYTHON };
  const system = findExecutable("python3");
  const probes = {
    explicit: env.TILLER_PYTHON ? probePython(env.TILLER_PYTHON) : undefined,
    system: system ? probePython(system) : undefined,
    venv: existsSync(venvPython) ? probePython(venvPython) : undefined,
  };
  const decision = choosePython(env, probes, venvDir);
  if (decision.action === "fail") throw new Error(decision.reason);
  if (decision.action === "use") {
    say(`using ${decision.python} (torch ${decision.torchVersion}; ${decision.reason})`);
    return probePython(decision.python);
  }
  say(`${decision.reason}: creating ${venvDir} and installing ${pinnedPackages.join(" ")}`);
  say("this downloads about 3 GB (torch's CUDA build is the only Linux build on PyPI); expect 3-10 minutes");
  if (!system)
    throw new Error("no python3 on PATH to create .venv with; install Python ≥ 3.10 or set TILLER_PYTHON");
  if (!existsSync(venvPython)) run(system, ["-m", "venv", venvDir]);
  run(venvPython, ["-m", "pip", "install", "--upgrade", "--progress-bar", "off", "pip"]);
  run(venvPython, ["-m", "pip", "install", "--progress-bar", "off", ...pinnedPackages]);
  const probe = probePython(venvPython);
  if (!probe.torch) throw new Error(`${venvPython} still cannot import torch after installing it`);
  return probe;
}

/**
 * The folder of one of tiller's dependencies. In a checkout they are in ./node_modules; where tiller
 * is installed as a dependency of a project, npm may have hoisted them to the project's node_modules.
 */
export function dependencyDir(name: string, root = repoRoot): string {
  return dirname(createRequire(join(root, "package.json")).resolve(`${name}/package.json`));
}

/** Whether this copy of tiller was installed into a project's node_modules (not a checkout). */
export function installedAsDependency(root = repoRoot): boolean {
  const parent = dirname(root);
  return basename(parent) === "node_modules" || basename(dirname(parent)) === "node_modules";
}

/** Where the addon goes: native/build/tiller.node, or under $TILLER_BUILD_DIR. */
function buildDirectory(): string {
  return join(repoRoot, "native", process.env.TILLER_BUILD_DIR ?? "build");
}

/** The torch version and CUDA-ness an addon file was built against, by loading it in a child Node. */
function addonInfo(addon: string): { torchVersion: string; cudaCompiled: boolean; devices: string } {
  const out = execFileSync(process.execPath, [
    "-e",
    `const i=require(${JSON.stringify(addon)}).engineInfo();console.log(JSON.stringify({torchVersion:i.torchVersion,cudaCompiled:i.cudaCompiled,devices:i.devices.map(d=>d.name).join(", ")}))`,
  ]).toString();
  return JSON.parse(out.trim().split("\n").pop() ?? "{}");
}

/**
 * $TILLER_ADDON=FILE at set-up: an addon built already (by another checkout's `npm install`, or
 * `npm run native`) instead of building one — a 10-20 minute compile on a small machine. It must
 * load and be built against the torch chosen here; it is copied to native/build/tiller.node, so the
 * installed copy needs no variable at run time.
 */
function usePrebuiltAddon(prebuilt: string, probe: PythonProbe): { cuda: boolean; addon: string } {
  const torch = probe.torch;
  if (!torch) throw new Error("no torch to check the addon against");
  if (!existsSync(prebuilt)) throw new Error(`TILLER_ADDON=${prebuilt}: no such file`);
  let info: ReturnType<typeof addonInfo>;
  try {
    info = addonInfo(prebuilt);
  } catch (error) {
    throw new Error(`TILLER_ADDON=${prebuilt} does not load: ${(error as Error).message}`);
  }
  if (info.torchVersion.split("+")[0] !== torch.version) {
    throw new Error(
      `TILLER_ADDON=${prebuilt} is built against torch ${info.torchVersion}, but ${probe.python} has torch ${torch.version}`,
    );
  }
  const buildDir = buildDirectory();
  const addon = join(buildDir, "tiller.node");
  if (resolve(prebuilt) !== addon) {
    mkdirSync(buildDir, { recursive: true });
    copyFileSync(prebuilt, addon);
  }
  say(`using the prebuilt addon ${prebuilt} (torch ${info.torchVersion}; TILLER_ADDON), copied to ${addon}`);
  return { cuda: info.cudaCompiled, addon };
}

function buildNative(probe: PythonProbe): { cuda: boolean; addon: string } {
  const torch = probe.torch;
  if (!torch) throw new Error("no torch to build against");
  const prebuilt = process.env.TILLER_ADDON;
  if (prebuilt) return usePrebuiltAddon(prebuilt, probe);
  const nvcc =
    findExecutable("nvcc", [
      join(process.env.CUDA_HOME ?? "/usr/local/cuda", "bin"),
      "/usr/local/cuda/bin",
    ]) ?? null;
  const { cuda, reason } = chooseCuda({ TILLER_CUDA: process.env.TILLER_CUDA }, torch.cudaVersion, nvcc);
  const buildDir = buildDirectory();
  say(`building the native addon (${cuda ? "CUDA" : "CPU"} build: ${reason}) in ${buildDir}`);
  const generator = findExecutable("ninja") ? ["-G", "Ninja"] : [];
  const cacheFile = join(buildDir, "CMakeCache.txt");
  const cachedGenerator = existsSync(cacheFile)
    ? /CMAKE_GENERATOR:INTERNAL=(.*)/.exec(readFileSync(cacheFile, "utf8"))?.[1]
    : undefined;
  const args = [
    "-S",
    join(repoRoot, "native"),
    "-B",
    buildDir,
    ...(cachedGenerator ? [] : generator),
    `-DTORCH_DIR=${torch.dir}`,
    `-DNODE_API_HEADERS_DIR=${join(dependencyDir("node-api-headers"), "include")}`,
    `-DNODE_ADDON_API_DIR=${dependencyDir("node-addon-api")}`,
    `-DTILLER_CUDA=${cuda ? "ON" : "OFF"}`,
    `-DTILLER_CXX11_ABI=${torch.cxx11Abi ? 1 : 0}`,
    ...(cuda && nvcc ? [`-DCMAKE_CUDA_COMPILER=${nvcc}`] : []),
  ];
  run("cmake", args);
  const jobs = String(Math.max(1, Math.min(cpus().length, Number(process.env.TILLER_BUILD_JOBS ?? 64))));
  run("cmake", ["--build", buildDir, "--parallel", jobs]);
  return { cuda, addon: join(buildDir, "tiller.node") };
}

function registerKernel(probe: PythonProbe): string | null {
  if (!probe.packages.jupyter_client) {
    say(`skipping the tslab kernel: ${probe.python} has no jupyter_client`);
    return null;
  }
  const prefix = join(repoRoot, ".jupyter");
  let tslab: string;
  try {
    tslab = join(dependencyDir("tslab"), "bin", "tslab");
  } catch {
    say("skipping the tslab kernel: the tslab package is not installed");
    return null;
  }
  run(tslab, ["install", "--python", probe.python, "--binary", tslab, "--prefix", prefix]);
  if (!installedAsDependency()) linkSelf();
  say(`registered the tslab kernel under ${prefix} (JUPYTER_PATH=${join(prefix, "share", "jupyter")})`);
  return join(prefix, "share", "jupyter");
}

/**
 * node_modules/tiller → the repository, so that `import ... from "tiller"` works in the notebooks
 * here (the tslab kernel type-checks cells and resolves packages through node_modules) as it does
 * in a project that installed tiller from npm.
 */
function linkSelf(): void {
  const link = join(repoRoot, "node_modules", "tiller");
  if (existsSync(link)) return;
  try {
    symlinkSync("..", link, "dir");
    say('linked node_modules/tiller to this repository (for `import ... from "tiller"` in notebooks)');
  } catch (error) {
    say(`could not link node_modules/tiller: ${(error as Error).message}`);
  }
}

function main() {
  const started = Date.now();
  const nativeOnly = process.argv.includes("--native-only");
  const probe = nativeOnly && existsSync(envFile) ? probePython(readSetupEnv().python) : resolvePython();
  const torch = probe.torch;
  if (!torch) throw new Error(`${probe.python} cannot import torch`);
  const missing = Object.entries(probe.packages)
    .filter(([, present]) => !present)
    .map(([name]) => name);
  if (missing.length > 0)
    say(`note: ${probe.python} lacks ${missing.join(", ")}; tests that need them will say so`);
  const native = buildNative(probe);
  const jupyterPath = nativeOnly
    ? existsSync(envFile)
      ? readSetupEnv().jupyterPath
      : null
    : registerKernel(probe);
  const env: SetupEnv = {
    python: probe.python,
    torchVersion: torch.version,
    torchDir: torch.dir,
    torchCudaVersion: torch.cudaVersion,
    cuda: native.cuda,
    addon: native.addon,
    jupyterPath,
    packages: probe.packages,
  };
  mkdirSync(join(repoRoot, ".tiller"), { recursive: true });
  writeFileSync(envFile, `${JSON.stringify(env, null, 2)}\n`);
  const info = addonInfo(native.addon);
  say(`addon loads: torch ${info.torchVersion}, ${info.devices}`);
  say(`done in ${((Date.now() - started) / 1000).toFixed(0)} s; wrote ${envFile}`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (error) {
    process.stderr.write(`[tiller setup] failed: ${(error as Error).message}\n`);
    process.exit(1);
  }
}
