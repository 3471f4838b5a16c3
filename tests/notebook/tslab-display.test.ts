// plot() and Progress in the real tslab kernel (run headless by nbclient): one output carries the
// plotly MIME type, HTML and text; a progress output is replaced in place, even from a later cell.
// This pins what src/notebook/display.ts assumes about tslab's internals.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Output {
  output_type: string;
  name?: string;
  text?: string;
  data?: Record<string, unknown>;
}

test("plot and Progress display rich, updatable outputs in the tslab kernel; plotly goes with the first chart only, no stray text", () => {
  const jupyterPath = readSetupEnv().jupyterPath;
  assert.ok(
    jupyterPath,
    "setup registered no Jupyter kernel (.tiller/env.json has no jupyterPath): run `npm run setup`",
  );
  const index = JSON.stringify(join(repoRoot, "dist", "src", "index.js"));
  const state = 'stage: "gen", totalSteps: 4, elapsedS: 10, reward: 0.5';
  const cells = [
    `import { notebook, rl } from ${index};
const log = new rl.MetricsLog();
for (let step = 1; step <= 4; step++) log.append({ step, "critic/score/mean": step / 10, "actor/pg_loss": -step });
notebook.inNotebook()`,
    `notebook.plot(log, ["critic/score/mean", ["actor/pg_loss"]])`,
    `const progress = new notebook.Progress();
progress.update({ ${state}, step: 1 });
progress.update({ ${state}, step: 2 });`,
    // Updates closer than 250 ms are merged; done() sends the one held back.
    `progress.update({ ${state}, step: 3 });
progress.done();
progress.mode`,
    `notebook.plot(log, "actor/pg_loss")`,
  ];
  const dir = tempDir("notebook");
  try {
    const cellsFile = join(dir.path, "cells.json");
    writeFileSync(cellsFile, JSON.stringify(cells));
    const outputsFile = join(dir.path, "outputs.json");
    runPython("run_notebook.py", [jupyterPath, repoRoot, cellsFile, outputsFile]);
    const outputs = JSON.parse(readFileSync(outputsFile, "utf8")) as Output[][];
    assert.deepEqual(outputs[0], [{ output_type: "stream", name: "stdout", text: "true\n" }]);

    const [chart, ...rest] = outputs[1] as Output[];
    assert.equal(chart?.output_type, "display_data");
    assert.deepEqual(Object.keys(chart?.data ?? {}).sort(), [
      "application/vnd.plotly.v1+json",
      "text/html",
      "text/plain",
    ]);
    const spec = chart?.data?.["application/vnd.plotly.v1+json"] as { data: { name: string; y: number[] }[] };
    assert.deepEqual(
      spec.data.map((t) => [t.name, t.y]),
      [
        ["critic/score/mean", [0.1, 0.2, 0.3, 0.4]],
        ["actor/pg_loss", [-1, -2, -3, -4]],
      ],
    );
    assert.match(chart?.data?.["text/html"] as string, /plotly\.js \(basic - minified\) v4\.1\.1/);
    assert.deepEqual(rest, [], 'no stray text output ("Chart(…)") under the chart');

    // The progress output of cell 3 holds the last update, sent while cell 4 ran.
    const progress = outputs[2] as Output[];
    assert.equal(progress.length, 1);
    assert.match(progress[0]?.data?.["text/html"] as string, /<b>step 3\/4<\/b>/);
    assert.match(progress[0]?.data?.["text/plain"] as string, /^step 3\/4 \[/);
    assert.deepEqual(outputs[3], [{ output_type: "stream", name: "stdout", text: "notebook\n" }]);
    // The second chart of the kernel comes without the 1.2 MB bundle: the page has it already.
    const [second, ...more] = outputs[4] as Output[];
    assert.deepEqual(more, []);
    assert.doesNotMatch(second?.data?.["text/html"] as string, /plotly\.js \(basic - minified\)/);
    assert.match(second?.data?.["text/html"] as string, /window\.Plotly\.newPlot/);
  } finally {
    dir.cleanup();
  }
});
