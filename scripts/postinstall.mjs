// What npm runs after installing tiller (package.json "postinstall"), in plain JavaScript because
// dist/ may not exist yet. Three places run it:
//  - a checkout (`npm install` in the repository): TypeScript is here (a devDependency), so dist/
//    is compiled, then the set-up runs (dist/scripts/setup.js: Python, native addon, tslab kernel);
//  - npm's temporary clone when a project installs tiller from a git URL: npm installs the clone's
//    dependencies, this compiles dist/, and npm packs the clone ("files" in package.json keeps dist/)
//    and throws it away; the set-up is skipped there, it runs where the package lands;
//  - the installed package in a project's node_modules: dist/ came in the package and there is no
//    TypeScript compiler of tiller's own, so only the set-up runs.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const say = (message) => process.stdout.write(`[tiller postinstall] ${message}\n`);

function run(args) {
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
if (existsSync(tsc)) {
  run([tsc, "-p", root]);
} else if (!existsSync(join(root, "dist", "scripts", "setup.js"))) {
  say(`${root} has neither dist/ nor TypeScript (node_modules/typescript) to build it with`);
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
