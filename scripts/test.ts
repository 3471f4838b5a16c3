// `npm test`: runs every compiled test file under dist/tests with Node's test runner.
//   node dist/scripts/test.js [--gpu] [name-substring ...]
// --gpu runs the CUDA subset (tests/gpu) instead of the CPU suite.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { repoRoot } from "./setup.js";

function testFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return testFiles(path);
    return name.endsWith(".test.js") ? [path] : [];
  });
}

const args = process.argv.slice(2);
const gpu = args.includes("--gpu");
const filters = args.filter((a) => !a.startsWith("--"));
const root = join(repoRoot, "dist", "tests");
const files = testFiles(root)
  .filter((f) => relative(root, f).startsWith("gpu/") === gpu)
  .filter((f) => filters.length === 0 || filters.some((s) => relative(root, f).includes(s)))
  .sort();
if (files.length === 0) {
  process.stderr.write(`no test files matched under ${root}\n`);
  process.exit(1);
}
const result = spawnSync(process.execPath, ["--test", "--test-reporter=spec", ...files], {
  stdio: "inherit",
});
process.exit(result.status ?? 1);
