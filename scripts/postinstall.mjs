// What npm runs after installing tiller (package.json "postinstall"), in plain JavaScript because
// dist/ may not exist yet. Three places run it:
//  - a checkout (`npm install` in the repository): a TypeScript compiler is here, so dist/
//    is compiled, then the set-up runs (dist/scripts/setup.js: Python, native addon, tslab kernel);
//  - npm's temporary clone when a project installs tiller from a git URL: npm installs the clone's
//    dependencies, this compiles dist/, and npm packs the clone ("files" in package.json keeps dist/)
//    and throws it away; the set-up is skipped there, it runs where the package lands;
//  - the installed package in a project's node_modules: dist/ came in the package and there is no
//    TypeScript compiler of tiller's own, so only the set-up runs.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const say = (message) => process.stdout.write(`[tiller postinstall] ${message}\n`);

function run(args) {
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

// The `tsc` npm links into node_modules/.bin, as `tsc -p .` in package.json scripts runs it (today
// that of @tslab/typescript-for-tslab, TypeScript 5.0; the sources do not compile under 5.9's
// typed-array generics yet).
const tsc = join(root, "node_modules", ".bin", "tsc");
// Installed into a project's node_modules (not a checkout, nor npm's clone): dist/ came built.
const installed = [dirname(root), dirname(dirname(root))].some((d) => basename(d) === "node_modules");
if (!installed && existsSync(tsc)) {
  const r = spawnSync(tsc, ["-p", root], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
} else if (!existsSync(join(root, "dist", "scripts", "setup.js"))) {
  say(`${root} has neither dist/ nor a TypeScript compiler (node_modules/.bin/tsc) to build it with`);
  process.exit(1);
}
// pacote (npm's fetcher) sets _PACOTE_NO_PREPARE_ while it prepares a git dependency in a clone.
if (process.env._PACOTE_NO_PREPARE_ !== undefined) {
  say(
    "npm is packing tiller from a git clone: dist/ is built; the set-up runs where the package is installed",
  );
} else {
  run([join(root, "dist", "scripts", "setup.js")]);
}
