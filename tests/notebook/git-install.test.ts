// tiller installs into a project of one's own from a git URL — `npm install git+file://…` of a
// repository holding this checkout's committed HEAD, with no network — and works there:
// `import("tiller")` loads the installed copy and its addon, and the quickstart notebook runs in
// the tslab kernel that tiller's set-up registered inside node_modules/tiller.
//
// npm prepares a git dependency in a temporary clone (its dependencies, devDependencies included,
// then its postinstall: scripts/postinstall.mjs compiles dist/ and skips the set-up there), packs
// it ("files" in package.json keeps dist/), installs the package and runs its postinstall: the
// set-up, with TILLER_PYTHON (this checkout's Python) and TILLER_ADDON (this checkout's addon,
// checked and copied, so nothing is compiled). Uncommitted changes are not in what is installed.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { after, test } from "node:test";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";
import { connect } from "../../src/index.js";
import { addonPath } from "../../src/native/binding.js";
import { runPython, tempDir } from "../helpers/python.js";

const output = join(repoRoot, "test-output", "git-install");
rmSync(output, { recursive: true, force: true });
mkdirSync(join(output, "home"), { recursive: true });
process.env.TILLER_HOME = join(output, "home");

const work = tempDir("git-install");
const bare = join(work.path, "tiller.git");
const project = join(work.path, "my-rl-project");
const installed = join(project, "node_modules", "tiller");
const commit = execFileSync("git", ["-C", repoRoot, "rev-parse", "HEAD"], { encoding: "utf8" }).trim();
// This checkout's environment, for the installed copy's set-up; not for anything run afterwards.
const setupEnv = readSetupEnv();
const { TILLER_ADDON: _addon, TILLER_PYTHON: _python, ...plainEnv } = process.env;

after(async () => {
  // The notebook's connect() started a local controller under this TILLER_HOME: stop it.
  const cluster = await connect(undefined, { start: false }).catch(() => undefined);
  await cluster?.shutdown().catch(() => undefined);
  cluster?.close();
  work.cleanup();
});

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeout: number): string {
  try {
    return execFileSync(command, args, {
      cwd,
      env,
      timeout,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    throw new Error(
      `${command} ${args.join(" ")} failed: ${e.message}\n${e.stdout ?? ""}\n${e.stderr ?? ""}`,
    );
  }
}

test("tiller installs from a git URL into a fresh project, with no network, its set-up reusing this checkout's Python and addon", {
  timeout: 300_000,
}, () => {
  execFileSync("git", ["init", "--bare", "--quiet", bare]);
  execFileSync("git", ["-C", repoRoot, "push", "--quiet", bare, "HEAD:refs/heads/main"]);
  // The bare repository's HEAD names main (npm resolves refs against it).
  execFileSync("git", ["-C", bare, "symbolic-ref", "HEAD", "refs/heads/main"]);
  mkdirSync(project);
  writeFileSync(
    join(project, "package.json"),
    `${JSON.stringify({ name: "my-rl-project", version: "1.0.0", private: true, type: "module" }, null, 2)}\n`,
  );
  assert.ok(relative(repoRoot, project).startsWith(".."), "the project is outside the repository");
  // Offline, npm cannot resolve tiller's dependencies by name (the cache holds their tarballs, not
  // the registry's metadata), so the project starts with the lockfile a first online install
  // writes: tiller at the commit, and tiller's own non-dev lock entries, hoisted as npm places them.
  const ours = JSON.parse(readFileSync(join(repoRoot, "package-lock.json"), "utf8"));
  const tillerPkg = JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8"));
  const url = `git+file://${bare}#${commit}`;
  const packages: Record<string, unknown> = {
    "": { name: "my-rl-project", version: "1.0.0", dependencies: { tiller: url } },
    "node_modules/tiller": {
      version: tillerPkg.version,
      resolved: url,
      hasInstallScript: true,
      license: tillerPkg.license,
      dependencies: tillerPkg.dependencies,
      bin: tillerPkg.bin,
      engines: tillerPkg.engines,
    },
  };
  for (const [key, entry] of Object.entries(ours.packages as Record<string, { dev?: boolean }>)) {
    if (key.startsWith("node_modules/") && !entry.dev) packages[key] = entry;
  }
  const lockfile = { name: "my-rl-project", version: "1.0.0", lockfileVersion: 3, requires: true, packages };
  writeFileSync(join(project, "package-lock.json"), `${JSON.stringify(lockfile, null, 2)}\n`);
  const started = Date.now();
  const log = run(
    "npm",
    ["install", "--no-audit", "--no-fund", "--offline", "--foreground-scripts", url],
    project,
    { ...plainEnv, TILLER_PYTHON: setupEnv.python, TILLER_ADDON: setupEnv.addon },
    280_000,
  );
  writeFileSync(join(output, "npm-install.log"), log);
  console.log(`npm install git+file://… took ${((Date.now() - started) / 1000).toFixed(0)} s`);
  const pkg = JSON.parse(readFileSync(join(project, "package.json"), "utf8"));
  assert.equal(pkg.dependencies?.tiller, `git+file://${bare}#${commit}`);
  const lock = JSON.parse(readFileSync(join(project, "package-lock.json"), "utf8"));
  assert.equal(lock.packages["node_modules/tiller"]?.resolved, `git+file://${bare}#${commit}`);
  // A copy of the package (not a link to this checkout), built: dist/ came in it, tests did not.
  assert.equal(lstatSync(installed).isSymbolicLink(), false);
  assert.ok(existsSync(join(installed, "dist", "src", "index.js")));
  assert.equal(existsSync(join(installed, "dist", "tests")), false, "the package carries no compiled tests");
  // npm's clone compiled dist/ (its output is shown only when it fails); the set-up ran in the
  // installed copy, with this checkout's addon.
  assert.match(
    log,
    /using the prebuilt addon .* copied to .*node_modules\/tiller\/native\/build\/tiller\.node/,
  );
  const env = JSON.parse(readFileSync(join(installed, ".tiller", "env.json"), "utf8"));
  assert.equal(env.addon, join(installed, "native", "build", "tiller.node"));
  assert.equal(env.jupyterPath, join(installed, ".jupyter", "share", "jupyter"));
  assert.ok(
    existsSync(join(env.jupyterPath, "kernels", "tslab", "kernel.json")),
    "the tslab kernel is registered",
  );
});

test('import("tiller") in the project loads the installed copy and its own addon', {
  timeout: 120_000,
}, () => {
  const script = [
    'const tiller = await import("tiller");',
    'const url = import.meta.resolve("tiller");',
    "console.log(JSON.stringify({ url, connect: typeof tiller.connect, torch: tiller.engineInfo().torchVersion }));",
  ].join("\n");
  const out = JSON.parse(
    run(process.execPath, ["--input-type=module", "-e", script], project, plainEnv, 110_000)
      .trim()
      .split("\n")
      .pop() ?? "{}",
  );
  assert.equal(out.url, `file://${join(installed, "dist", "src", "index.js")}`);
  assert.equal(out.connect, "function");
  const ours = JSON.parse(
    execFileSync(
      process.execPath,
      [
        "-e",
        `console.log(JSON.stringify(require(${JSON.stringify(addonPath())}).engineInfo().torchVersion))`,
      ],
      {
        encoding: "utf8",
      },
    ),
  );
  assert.equal(out.torch, ours);
});

test("the quickstart notebook runs top to bottom in the installed tiller's tslab kernel and learns", {
  timeout: 600_000,
}, () => {
  const env = JSON.parse(readFileSync(join(installed, ".tiller", "env.json"), "utf8"));
  const notebooks = join(project, "notebooks");
  mkdirSync(notebooks, { recursive: true });
  cpSync(join(installed, "notebooks", "quickstart.ipynb"), join(notebooks, "quickstart.ipynb"));
  const executed = join(output, "executed-quickstart.ipynb");
  runPython(
    "execute_notebook.py",
    [env.jupyterPath, join(notebooks, "quickstart.ipynb"), executed, join(output, "quickstart.html"), "300"],
    { timeoutMs: 590_000 },
  );
  const nb = JSON.parse(readFileSync(executed, "utf8")) as {
    cells: {
      cell_type: string;
      outputs?: { output_type: string; ename?: string; text?: unknown; data?: Record<string, unknown> }[];
    }[];
  };
  const joined = (t: unknown) => (Array.isArray(t) ? t.join("") : typeof t === "string" ? t : "");
  const code = nb.cells.filter((c) => c.cell_type === "code");
  for (const [i, cell] of code.entries()) {
    const errors = (cell.outputs ?? []).filter((o) => o.output_type === "error" || o.ename);
    assert.equal(errors.length, 0, `cell ${i}: ${JSON.stringify(errors)}`);
  }
  const text = code
    .flatMap((c) => c.outputs ?? [])
    .map((o) => joined(o.text ?? o.data?.["text/plain"]))
    .join("\n");
  const m = /mean reward: first 10 steps ([\d.]+) → last 10 steps ([\d.]+)/.exec(text);
  assert.ok(m, text);
  console.log(`git-installed quickstart: ${m[0]}`);
  assert.ok(Number(m[2]) > Number(m[1]) + 0.3, m[0]);
});
