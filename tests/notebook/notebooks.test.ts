// Every notebook in notebooks/ runs top to bottom in the real tslab kernel (nbclient) against a
// real controller and CPU worker started by connect(), without an error — in a project of a
// user's own outside this repository, which installed tiller with `npm install <path>`, as a
// researcher would. Their HTML (nbconvert) is kept in test-output/notebooks/ for the browser
// checks and for a person to look at.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { after, test } from "node:test";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";
import { connect } from "../../src/index.js";
import { HeadlessBrowser, noChromium } from "../helpers/browser.js";
import { runPython, tempDir } from "../helpers/python.js";

interface Cell {
  cell_type: string;
  outputs?: {
    output_type: string;
    text?: string | string[];
    data?: Record<string, unknown>;
    ename?: string;
  }[];
}

/** nbformat keeps multi-line text as a list of lines or as one string. */
const joined = (t: unknown) => (Array.isArray(t) ? t.join("") : typeof t === "string" ? t : "");

export const notebookOutput = join(repoRoot, "test-output", "notebooks");
const home = join(notebookOutput, "home");
rmSync(notebookOutput, { recursive: true, force: true });
mkdirSync(home, { recursive: true });
process.env.TILLER_HOME = home;

// A user's project, outside the repository: its own package.json, tiller installed by path (npm
// links the folder; tiller's own dependencies, apache-arrow among them, stay inside it).
// --ignore-scripts: this checkout is set up already (the suite runs in it); a fresh clone
// installed by path runs tiller's setup in its folder.
const project = tempDir("project");
writeFileSync(
  join(project.path, "package.json"),
  `${JSON.stringify({ name: "my-rl-project", version: "1.0.0", private: true, type: "module" }, null, 2)}\n`,
);

after(async () => {
  // connect() in the notebooks started a local controller under this TILLER_HOME: stop it.
  const cluster = await connect(undefined, { start: false }).catch(() => undefined);
  await cluster?.shutdown().catch(() => undefined);
  cluster?.close();
  project.cleanup();
});

function outputsText(cell: Cell): string {
  return (cell.outputs ?? []).map((o) => joined(o.text ?? o.data?.["text/plain"])).join("");
}

const notebooks = readdirSync(join(repoRoot, "notebooks")).filter((f) => f.endsWith(".ipynb"));

test("tiller installs into a project of one's own by path, without the project having apache-arrow", {
  timeout: 180_000,
}, () => {
  assert.ok(relative(repoRoot, project.path).startsWith(".."), "the project is outside the repository");
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--offline", "--ignore-scripts", repoRoot], {
    cwd: project.path,
    stdio: "pipe",
    timeout: 170_000,
  });
  const pkg = JSON.parse(readFileSync(join(project.path, "package.json"), "utf8"));
  assert.match(pkg.dependencies?.tiller ?? "", /^file:/);
  assert.ok(existsSync(join(project.path, "node_modules", "tiller", "dist", "src", "index.js")));
  // The notebooks' Arrow tables must be nameable through "tiller" alone (TS2742 otherwise).
  assert.equal(existsSync(join(project.path, "node_modules", "apache-arrow")), false);
});

test("the notebooks are there", () => {
  assert.deepEqual(notebooks.sort(), [
    "inspect-rollouts.ipynb",
    "plan.ipynb",
    "quickstart.ipynb",
    "stepwise-debugging.ipynb",
  ]);
});

for (const name of notebooks) {
  test(`notebooks/${name} runs top to bottom in the tslab kernel`, { timeout: 600_000 }, () => {
    const jupyterPath = readSetupEnv().jupyterPath;
    assert.ok(jupyterPath, "setup registered no tslab kernel (.tiller/env.json has no jupyterPath)");
    const work = join(project.path, "notebooks");
    mkdirSync(work, { recursive: true });
    cpSync(join(repoRoot, "notebooks", name), join(work, name));
    const executed = join(notebookOutput, `executed-${name}`);
    const html = join(notebookOutput, name.replace(".ipynb", ".html"));
    runPython("execute_notebook.py", [jupyterPath, join(work, name), executed, html, "300"], {
      timeoutMs: 600_000,
    });
    const nb = JSON.parse(readFileSync(executed, "utf8")) as { cells: Cell[] };
    const code = nb.cells.filter((c) => c.cell_type === "code");
    for (const [i, cell] of code.entries()) {
      const errors = (cell.outputs ?? []).filter((o) => o.output_type === "error" || o.ename);
      assert.equal(errors.length, 0, `cell ${i}: ${JSON.stringify(errors)}`);
    }
    const text = code.map(outputsText).join("\n");
    if (name === "quickstart.ipynb") {
      const m = /mean reward: first 10 steps ([\d.]+) → last 10 steps ([\d.]+)/.exec(text);
      assert.ok(m, text);
      console.log(`notebook quickstart: ${m[0]}`);
      assert.ok(Number(m[2]) > Number(m[1]) + 0.3, m[0]);
    }
    if (name === "stepwise-debugging.ipynb") {
      assert.match(
        text,
        /hook before:update failed: the advantages look wrong\nthen continueStep\(\) finished step \d+/,
      );
      assert.match(text, /optimizer\.lr: -1 must be > 0/);
      const m = /after restore: pg_loss (\S+) vs (\S+)/.exec(text);
      assert.ok(m && m[1] === m[2], `restore gave a different step: ${m?.[0]}`);
      assert.match(text, /replay of step \d+: (\d+)\/\1 responses identical/);
      assert.match(text, /paused at before:update of step \d+/);
      assert.match(
        text,
        /replay of the hooked step 2 \(from step 1\): (\d+)\/\1 responses identical, 1 hook change applied again/,
      );
      assert.match(text, /lr is now 0\.002/);
    }
    if (name === "inspect-rollouts.ipynb") {
      // The count-up task (three-token answers) learns clearly within the notebook's 300 steps.
      const m = /trained 300 steps; mean reward: first 10 steps ([\d.]+) → last 10 steps ([\d.]+)/.exec(text);
      assert.ok(m, text);
      console.log(`notebook inspect-rollouts: ${m[0]}`);
      assert.ok(Number(m[2]) > Number(m[1]) + 0.3, m[0]);
      // The progress output ends at the last step (its last update was once dropped: "step 113/300").
      const bars = code
        .flatMap((c) => c.outputs ?? [])
        .map((o) => joined(o.data?.["text/plain"]))
        .filter((t) => /^step \d+\/300 \[/.test(t));
      assert.equal(bars.length, 1, "one progress output");
      assert.match(bars[0] as string, /^step 300\/300 \[/);
    }
    if (name === "plan.ipynb") {
      assert.match(text, /671\.0B parameters, 37\.6B active/);
      assert.match(text, /Qwen3MoeForCausalLM on 8 × H200-141GB: \d+ layouts tried/);
    }
    if (name === "stepwise-debugging.ipynb") {
      const bars = code
        .flatMap((c) => c.outputs ?? [])
        .filter((o) => /^step 1\/1 \[/.test(joined(o.data?.["text/plain"])));
      assert.equal(bars.length, 0, "step() shows no progress bar of one step");
    }
    // No cell prints a stray "Chart(…)" or "Inspector(…)" line under its output.
    assert.doesNotMatch(
      code
        .flatMap((c) =>
          (c.outputs ?? []).filter((o) => o.output_type === "stream").map((o) => joined(o.text)),
        )
        .join(""),
      /Chart\(|Inspector\(/,
    );
  });
}

const bundleBanner = "plotly.js (basic - minified) v4.1.1";

test("the notebooks' HTML draws in Chromium: one plotly bundle per page, charts with a legend per panel and titled axes, a working inspector, no console errors", {
  skip: noChromium(),
  timeout: 180_000,
}, async () => {
  const browser = await HeadlessBrowser.launch();
  try {
    for (const name of notebooks) {
      const html = join(notebookOutput, name.replace(".ipynb", ".html"));
      const bundles = readFileSync(html, "utf8").split(bundleBanner).length - 1;
      assert.equal(bundles, 1, `${name}: the plotly bundle is on the page ${bundles} times`);
      const opened = await browser.open(html);
      try {
        const page = opened.page;
        const traces = page.locator(".tiller-chart .scatterlayer .trace, .tiller-chart .barlayer .trace");
        await traces.first().waitFor({ timeout: 30_000 });
        const count = await traces.count();
        assert.ok(count >= 2, `${name}: ${count} plotly traces drawn`);
        // plotly names a y axis title's text "ytitle", "y2title" …, a legend's texts "legendtext", "legend2text" ….
        const yTitles = await page
          .locator(".tiller-chart text[class$='title']")
          .evaluateAll((els) =>
            els
              .filter((e) => /^y\d*title$/.test(e.getAttribute("class") ?? ""))
              .map((e) => e.textContent ?? ""),
          );
        assert.ok(
          yTitles.filter((t) => t.trim() !== "").length >= 1,
          `${name}: y axes are titled: ${yTitles.join(" | ")}`,
        );
        const ticks = await page.locator(".tiller-chart .ytick text").allTextContents();
        assert.ok(ticks.length > 0);
        const si = ticks.filter((t) => /\d\s*[nµumkMG]$/.test(t.trim()));
        assert.deepEqual(si, [], `${name}: SI-letter ticks`);
        if (name === "quickstart.ipynb") {
          // The entropy/ppo_kl panel: its own legend naming both, ppo_kl on a right axis.
          const legendTexts = await page
            .locator(".tiller-chart text[class^='legend'][class$='text']")
            .allTextContents();
          assert.ok(legendTexts.includes("actor/entropy"), legendTexts.join(" | "));
          assert.ok(
            legendTexts.some((t) => t.startsWith("actor/ppo_kl")),
            legendTexts.join(" | "),
          );
          assert.ok(!legendTexts.includes("critic/score/mean"), "a one-metric panel has no legend entry");
          assert.ok(
            yTitles.some((t) => t.includes("actor/lr")),
            yTitles.join(" | "),
          );
          // The live chart and the metrics chart: their x axes are steps.
          const steps = [
            ...(await page.locator(".tiller-chart").nth(0).locator(".xtick text").allTextContents()),
            ...(await page.locator(".tiller-chart").nth(1).locator(".xtick text").allTextContents()),
          ];
          assert.ok(
            steps.every((t) => /^[\d,−-]+$/.test(t.trim())),
            `whole step ticks: ${steps.join(" ")}`,
          );
          const distribution = page.locator(".tiller-chart", { hasText: "score: distribution" });
          assert.equal(
            await distribution.locator(".colorbar").count(),
            1,
            "the reward heatmap over steps has its colour scale",
          );
          assert.ok(
            (await distribution.locator(".scatterlayer .points path").count()) >= 2,
            "heatmap cells drawn",
          );
        }
        if (name === "inspect-rollouts.ipynb") {
          const first = page.getByTestId("inspector").first();
          assert.ok((await first.getByTestId("group").count()) >= 2, "the inspector shows the groups");
          assert.equal(await page.getByTestId("side-by-side").count(), 1, "two steps side by side");
          const rewards = async () =>
            first
              .getByTestId("response")
              .evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-reward"))));
          const before = await rewards();
          await first.getByTestId("sort").selectOption("reward-asc");
          const after = await rewards();
          assert.equal(after.length, before.length);
          assert.notDeepEqual(after, before, "the sort control reorders the responses");
          const lengths = await first
            .getByTestId("response")
            .evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-length"))));
          assert.ok(Math.max(...lengths) > 1, "responses of several tokens");
        }
        await opened.screenshot(`notebook-${name.replace(".ipynb", "")}`);
        assert.deepEqual(opened.errors, [], `${name}: console errors`);
        assert.deepEqual(opened.remoteRequests, [], `${name}: requests that leave the machine`);
      } finally {
        await opened.close();
      }
    }
  } finally {
    await browser.close();
  }
});
