// `npm run notebook`: JupyterLab on notebooks/ with the tslab kernel that setup registered. JupyterLab
// itself is installed into setup's Python on first use (the tests only need nbclient). Arguments
// after `--` go to JupyterLab (e.g. `npm run notebook -- --no-browser --port 8899`).
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { readSetupEnv, repoRoot } from "./setup.js";

function main(): void {
  const env = readSetupEnv();
  if (!env.jupyterPath) {
    throw new Error(
      "no tslab kernel is registered (.tiller/env.json has no jupyterPath): run `npm run setup`",
    );
  }
  const has = spawnSync(env.python, ["-c", "import jupyterlab"], { stdio: "ignore" }).status === 0;
  if (!has) {
    console.log(`[tiller notebook] installing JupyterLab into ${env.python} (first use)`);
    const pip = spawnSync(env.python, ["-m", "pip", "install", "--quiet", "jupyterlab"], {
      stdio: "inherit",
    });
    if (pip.status !== 0) throw new Error(`pip install jupyterlab failed (exit ${pip.status})`);
  }
  const args = [
    "-m",
    "jupyterlab",
    `--notebook-dir=${join(repoRoot, "notebooks")}`,
    ...process.argv.slice(2),
  ];
  console.log(`[tiller notebook] JUPYTER_PATH=${env.jupyterPath} ${env.python} ${args.join(" ")}`);
  const child = spawn(env.python, args, {
    stdio: "inherit",
    env: { ...process.env, JUPYTER_PATH: env.jupyterPath },
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => child.kill(signal));
  child.on("exit", (code) => process.exit(code ?? 0));
}

try {
  main();
} catch (error) {
  console.error(`[tiller notebook] ${(error as Error).message}`);
  process.exit(1);
}
