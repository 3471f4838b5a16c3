// `tiller quickstart` (npm run quickstart): the whole path on the embedded default. Writes a tiny
// random Qwen3-shaped model and the built-in next-digit task, connects to (or starts) the local
// controller and its worker, trains with GRPO while a progress bar shows the reward, then writes
// metrics.arrow and an HTML report with plotly charts into the run folder.
import { join, resolve } from "node:path";
import { connect } from "../client/client.js";
import type { MetricsRow } from "../client/experiment.js";
import { engineInfo } from "../native/engine.js";
import { Progress } from "../notebook/progress.js";
import { writeRunReport } from "../notebook/report.js";
import { prepareCountUp } from "../rl/tasks/count-up.js";
import { prepareNextDigit } from "../rl/tasks/next-digit.js";

export interface QuickstartOptions {
  steps: number;
  runDir?: string;
  /** Where the tiny model and the prompts are written (kept between runs). */
  assetsDir: string;
  seed: number;
  /** next-digit ("472=" → "3", one token) or count-up ("472=" → "345", three tokens). */
  task: "next-digit" | "count-up";
}

function parse(args: string[]): QuickstartOptions {
  let stepsGiven = false;
  const options: QuickstartOptions = {
    steps: 80,
    assetsDir: resolve(".tiller", "quickstart"),
    seed: 1,
    task: "next-digit",
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i];
    const value = args[i + 1];
    const need = () => {
      if (value === undefined) throw new Error(`${flag}: needs a value`);
      i++;
      return value;
    };
    if (flag === "--steps") {
      options.steps = Number(need());
      stepsGiven = true;
      if (!Number.isInteger(options.steps) || options.steps < 1)
        throw new Error(`--steps: ${value} must be an integer ≥ 1`);
    } else if (flag === "--run-dir") options.runDir = resolve(need());
    else if (flag === "--assets") options.assetsDir = resolve(need());
    else if (flag === "--seed") options.seed = Number(need());
    else if (flag === "--task") {
      const task = need();
      if (task !== "next-digit" && task !== "count-up")
        throw new Error(`--task: ${JSON.stringify(task)}; allowed: next-digit, count-up`);
      options.task = task;
    } else
      throw new Error(
        `unknown option ${flag}; options: --steps N, --run-dir DIR, --assets DIR, --seed N, --task next-digit|count-up`,
      );
  }
  // count-up's three-token answers take longer to learn: 360 steps, about 40 s on 2 CPU cores.
  if (!stepsGiven && options.task === "count-up") options.steps = 360;
  return options;
}

const mean = (rows: MetricsRow[], key: string) =>
  rows.reduce((s, r) => s + (r[key] ?? 0), 0) / Math.max(rows.length, 1);

export async function quickstart(args: string[]): Promise<void> {
  const options = parse(args);
  const started = performance.now() / 1000;
  const info = engineInfo();
  console.log(
    `tiller quickstart · torch ${info.torchVersion} · ${info.cudaAvailable ? "CUDA" : "CPU"} engine`,
  );
  const countUp = options.task === "count-up";
  const overrides = {
    name: "quickstart",
    seed: options.seed,
    totalSteps: options.steps,
    ...(options.runDir ? { runDir: options.runDir } : {}),
  };
  // next-digit: held-out accuracy, greedy answers to four-digit prompts it never trains on, before and after.
  const config = countUp
    ? (await prepareCountUp(join(options.assetsDir, "count-up"), overrides, { seed: options.seed })).config
    : await prepareNextDigit(options.assetsDir, overrides, { seed: options.seed }).then((setup) => ({
        ...setup.config,
        data: { ...setup.config.data, val: setup.valFile },
        validation: { everySteps: options.steps, beforeTraining: true },
      }));
  console.log(
    countUp
      ? 'task: "472=" → "345" (three digits counting up from the one after the last); a tiny random Qwen3 learns it with GRPO'
      : 'task: "472=" → "3" (the digit after the last one); a tiny random Qwen3 learns it with GRPO',
  );

  const cluster = await connect();
  try {
    await cluster.waitForWorkers(1);
    const exp = await cluster.experiment(config);
    console.log(`run folder: ${exp.runDir}`);
    const progress = new Progress();
    let reward: number | undefined;
    let tokens = 0;
    const rows = await exp.run(options.steps, {
      onProgress: (e) => {
        if (e.stage === "done") {
          reward = e.reward;
          tokens += e.tokens ?? 0;
        } else if (progress.mode === "lines") {
          return; // a log file gets one line per step, not one per stage
        }
        progress.update({
          stage: e.stage,
          step: e.stage === "done" ? e.step : Math.max(e.step, 0),
          totalSteps: options.steps,
          elapsedS: performance.now() / 1000 - started,
          tokens,
          ...(reward !== undefined ? { reward } : {}),
        });
      },
    });
    progress.done();
    const k = Math.min(10, Math.floor(rows.length / 2));
    const first = mean(rows.slice(0, k), "critic/score/mean");
    const last = mean(rows.slice(-k), "critic/score/mean");
    const report = join(exp.runDir, "report.html");
    const metricsTable = await exp.metrics();
    const heldOutKey = "val-core/tiller/next-digit/acc/mean@1";
    const heldOut = metricsTable
      .toArray()
      .map((r) => r.toJSON() as Record<string, number | null>)
      .filter((r) => typeof r[heldOutKey] === "number");
    const heldOutBefore = heldOut[0]?.[heldOutKey] ?? Number.NaN;
    const heldOutAfter = heldOut.at(-1)?.[heldOutKey] ?? Number.NaN;
    await writeRunReport(exp.runDir, {
      title: `tiller quickstart: GRPO on ${options.task}`,
      summary: {
        steps: rows.length,
        [`mean reward, first ${k} steps`]: first.toFixed(3),
        [`mean reward, last ${k} steps`]: last.toFixed(3),
        ...(countUp
          ? {}
          : {
              "held-out accuracy (greedy, 4-digit prompts), before → after": `${heldOutBefore.toFixed(3)} → ${heldOutAfter.toFixed(3)}`,
            }),
        "run folder": exp.runDir,
      },
      rollouts: await exp.rollouts(),
    });
    await exp.close();
    console.log(`mean reward: first ${k} steps ${first.toFixed(3)} → last ${k} steps ${last.toFixed(3)}`);
    if (!countUp) {
      console.log(
        `held-out accuracy (greedy, 100 four-digit prompts never trained on): ${heldOutBefore.toFixed(3)} before → ${heldOutAfter.toFixed(3)} after`,
      );
    }
    console.log(`metrics: ${join(exp.runDir, "metrics.arrow")}`);
    console.log(`report:  ${report}`);
  } finally {
    // A controller this command started is stopped again; one that was running keeps running.
    if (cluster.started) await cluster.shutdown().catch(() => undefined);
    cluster.close();
  }
}
