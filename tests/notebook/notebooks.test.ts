// Every notebook in notebooks/ runs top to bottom in the real tslab kernel (nbclient) against a
// real controller and CPU worker started by connect(), without an error; its HTML (nbconvert) is
// kept in test-output/notebooks/ for the browser checks and for a person to look at.
import assert from "node:assert/strict";
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { readSetupEnv, repoRoot } from "../../scripts/setup.js";
import { connect } from "../../src/index.js";
import { HeadlessBrowser, noChromium } from "../helpers/browser.js";
import { runPython } from "../helpers/python.js";

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

// Under the repository so that `import ... from "tiller"` resolves through node_modules/tiller.
export const notebookOutput = join(repoRoot, "test-output", "notebooks");
const home = join(notebookOutput, "home");
rmSync(notebookOutput, { recursive: true, force: true });
mkdirSync(home, { recursive: true });
process.env.TILLER_HOME = home;

after(async () => {
  // connect() in the notebooks started a local controller under this TILLER_HOME: stop it.
  const cluster = await connect(undefined, { start: false }).catch(() => undefined);
  await cluster?.shutdown().catch(() => undefined);
  cluster?.close();
});

function outputsText(cell: Cell): string {
  return (cell.outputs ?? []).map((o) => joined(o.text ?? o.data?.["text/plain"])).join("");
}

const notebooks = readdirSync(join(repoRoot, "notebooks")).filter((f) => f.endsWith(".ipynb"));

test("the notebooks are there", () => {
  assert.deepEqual(notebooks.sort(), [
    "inspect-rollouts.ipynb",
    "quickstart.ipynb",
    "stepwise-debugging.ipynb",
  ]);
});

for (const name of notebooks) {
  test(`notebooks/${name} runs top to bottom in the tslab kernel`, { timeout: 600_000 }, () => {
    const jupyterPath = readSetupEnv().jupyterPath;
    assert.ok(jupyterPath, "setup registered no tslab kernel (.tiller/env.json has no jupyterPath)");
    const work = join(notebookOutput, name.replace(".ipynb", ""));
    mkdirSync(work, { recursive: true });
    cpSync(join(repoRoot, "notebooks", name), join(work, name));
    const executed = join(work, `executed-${name}`);
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
    }
  });
}

test("the notebooks' HTML draws in Chromium: plots with traces, a working inspector, no console errors", {
  skip: noChromium(),
  timeout: 120_000,
}, async () => {
  const browser = await HeadlessBrowser.launch();
  try {
    for (const name of notebooks) {
      const html = join(notebookOutput, name.replace(".ipynb", ".html"));
      const opened = await browser.open(html);
      try {
        const page = opened.page;
        if (name !== "inspect-rollouts.ipynb") {
          const traces = page.locator(".tiller-chart .scatterlayer .trace");
          await traces.first().waitFor({ timeout: 20_000 });
          const count = await traces.count();
          assert.ok(count >= 2, `${name}: ${count} plotly traces drawn`);
        } else {
          const groups = page.getByTestId("group");
          assert.ok((await groups.count()) >= 2, "the inspector shows the groups");
          const rewards = async () =>
            page
              .getByTestId("response")
              .evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-reward"))));
          const before = await rewards();
          await page.getByTestId("sort").selectOption({ index: 1 });
          const after = await rewards();
          assert.equal(after.length, before.length);
          assert.notDeepEqual(after, before, "the sort control reorders the responses");
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
