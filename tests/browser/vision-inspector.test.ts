// The rollout inspector with images, in headless Chromium: a real step of the colour-square task
// (tiny Qwen2.5-VL, CPU) shows each group's prompt image, decoded by the browser at its size, and
// a cell that is not a PNG/JPEG data URL never reaches the page.
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { Field, List, Table, Utf8, vectorFromArray } from "apache-arrow";
import { ExperimentRun } from "../../src/controller/experiment.js";
import { inspectorData, writeInspector } from "../../src/notebook/index.js";
import { resolveConfig } from "../../src/rl/config.js";
import { prepareColourSquare } from "../../src/rl/tasks/colour-square.js";
import { localRank } from "../../src/worker/local.js";
import { HeadlessBrowser, noChromium } from "../helpers/browser.js";
import { tempDir } from "../helpers/python.js";

const skip = noChromium();
const dir = tempDir("vision-inspector");
let browser: HeadlessBrowser | undefined;
let rollouts: Table;

before(async () => {
  if (skip) return;
  browser = await HeadlessBrowser.launch();
  const setup = await prepareColourSquare(dir.path, { runDir: join(dir.path, "run"), promptsPerStep: 6 }, 64);
  const local = localRank();
  const run = await ExperimentRun.create(
    resolveConfig({ ...setup.config, rollout: { samplesPerPrompt: 3, maxResponseTokens: 1 } }),
    local.call,
  );
  try {
    await run.runStep();
    rollouts = run.rollouts();
  } finally {
    await run.close();
    local.dispose();
  }
});
after(async () => {
  await browser?.close();
  dir.cleanup();
});

test("each group card shows its prompt's image, decoded by the browser", { skip }, async () => {
  const file = join(dir.path, "inspector.html");
  await writeInspector(file, rollouts);
  const opened = await (browser as HeadlessBrowser).open(file);
  try {
    const groups = await opened.page.$$eval('[data-testid="group"]', (cards) =>
      cards.map((card) =>
        [...card.querySelectorAll('[data-testid="group-image"]')].map((img) => {
          const i = img as unknown as { naturalWidth: number; naturalHeight: number; complete: boolean };
          return [i.complete, i.naturalWidth, i.naturalHeight];
        }),
      ),
    );
    assert.equal(groups.length, 6);
    for (const images of groups) assert.deepEqual(images, [[true, 32, 32]]);
    const shot = await opened.screenshot("vision-inspector");
    console.log(`screenshot: ${shot}`);
    assert.deepEqual(opened.errors, []);
    assert.deepEqual(opened.remoteRequests, []);
  } finally {
    await opened.close();
  }
});

test("image cells that are not PNG/JPEG data URLs are left out", () => {
  const table = new Table({
    uid: vectorFromArray(["a", "b"], new Utf8()),
    images: vectorFromArray(
      [["javascript:alert(1)", "data:image/svg+xml;base64,PHN2Zz4="], ["data:image/png;base64,iVBORw0KGgo="]],
      new List(new Field("item", new Utf8(), true)),
    ),
  });
  const data = inspectorData(table);
  assert.equal(data.groups[0]?.images, undefined);
  assert.deepEqual(data.groups[1]?.images, ["data:image/png;base64,iVBORw0KGgo="]);
});
