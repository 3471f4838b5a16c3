// The progress display: the one-line text (layout, ETA, narrowing), the HTML block, and where
// Progress writes in each mode (terminal, log lines, notebook output updated in place).
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  etaSeconds,
  formatCount,
  formatDuration,
  Progress,
  type ProgressState,
  type ProgressStream,
  renderProgressHtml,
  renderProgressLine,
} from "../../src/notebook/index.js";

const running: ProgressState = {
  stage: "gen",
  step: 25,
  totalSteps: 100,
  tokens: 2_500_000,
  reward: 0.53219,
  elapsedS: 50,
};

test("a wide line shows every figure; ETA comes from the mean time per finished step", () => {
  assert.equal(
    renderProgressLine(running, 120),
    "step  25/100 [#######---------------------]  25% | gen | reward 0.532 | 2.50M tok | 50.0k tok/s | 50s, eta 2m30s",
  );
  assert.equal(etaSeconds(running), 150);
  assert.equal(etaSeconds({ ...running, step: 0 }), undefined);
  assert.match(renderProgressLine({ ...running, step: 0 }, 120), / {2}0% \| .* \| 50s, eta \?$/);
  assert.match(renderProgressLine({ ...running, step: 100 }, 120), /\[#+\] 100% \| .* \| done in 50s$/);
  // optional figures are optional
  assert.equal(
    renderProgressLine({ stage: "update", step: 1, totalSteps: 4, elapsedS: 3725 }, 60),
    "step 1/4 [####------------]  25% | update | 1h02m, eta 3h06m",
  );
  assert.match(renderProgressLine({ ...running, reward: Number.NaN }, 120), /reward nan/);
});

test("narrow lines fit their width and lose the least useful figures first", () => {
  for (let width = 1; width <= 160; width++) {
    const line = renderProgressLine(running, width);
    assert.ok(line.length <= width, `width ${width}: ${JSON.stringify(line)}`);
    if (width >= 17) assert.ok(line.startsWith("step  25/100"), `width ${width}: ${line}`);
  }
  const at80 = renderProgressLine(running, 80);
  assert.doesNotMatch(at80, /tok\/s/);
  assert.match(at80, /reward 0\.532/);
  assert.match(at80, /\[#+-+\]/);
  const at50 = renderProgressLine(running, 50);
  assert.doesNotMatch(at50, /reward|tok/);
  assert.match(at50, /eta 2m30s$/);
  assert.equal(renderProgressLine(running, 30), "step  25/100  25% | 50s");
  assert.equal(renderProgressLine(running, 10), "step  25/1");
});

test("bad states and widths are refused by name", () => {
  assert.throws(
    () => renderProgressLine({ ...running, step: 101 }, 80),
    /progress\.step: .*\[0, 100\].* got 101/,
  );
  assert.throws(() => renderProgressLine({ ...running, step: 2.5 }, 80), /progress\.step/);
  assert.throws(() => renderProgressLine({ ...running, totalSteps: 0, step: 0 }, 80), /progress\.totalSteps/);
  assert.throws(() => renderProgressLine({ ...running, elapsedS: Number.NaN }, 80), /progress\.elapsedS/);
  assert.throws(() => renderProgressLine({ ...running, tokens: -1 }, 80), /progress\.tokens/);
  assert.throws(() => renderProgressLine(running, 0), /width/);
  assert.throws(() => renderProgressHtml({ ...running, step: -1 }), /progress\.step/);
});

test("counts and durations are short and round correctly at unit edges", () => {
  assert.deepEqual([0, 999, 1000, 1234, 999_499, 999_999, 45_600_000, 7.5e12].map(formatCount), [
    "0",
    "999",
    "1.00k",
    "1.23k",
    "999k",
    "1.00M",
    "45.6M",
    "7.50T",
  ]);
  assert.deepEqual([0, 59.9, 60, 61, 3599, 3600, 7325].map(formatDuration), [
    "0s",
    "59s",
    "1m00s",
    "1m01s",
    "59m59s",
    "1h00m",
    "2h02m",
  ]);
});

test("the HTML block has the bar at the right width and escapes the stage", () => {
  const html = renderProgressHtml({ ...running, stage: "<gen & score>" });
  assert.match(html, /<b>step 25\/100<\/b> \(25%\)/);
  assert.match(html, /width: 25\.00%/);
  assert.match(
    html,
    /&#60;gen &#38; score&#62; · reward 0\.532 · 2\.50M tok · 50\.0k tok\/s · 50s, eta 2m30s/,
  );
  assert.doesNotMatch(html, /<gen/);
});

function captureStream(isTTY: boolean, columns?: number): ProgressStream & { written: string[] } {
  const written: string[] = [];
  return { isTTY, columns, written, write: (text: string) => written.push(text) };
}

test("on a terminal the line is rewritten in place, sized to the terminal, and ended by done()", () => {
  const stream = captureStream(true, 61);
  const progress = new Progress({ stream });
  assert.equal(progress.mode, "tty");
  progress.update({ ...running, step: 1 });
  progress.update({ ...running, step: 2 });
  progress.done();
  progress.done();
  assert.equal(stream.written.length, 3);
  for (const text of stream.written.slice(0, 2)) {
    assert.ok(text.startsWith("\r") && text.endsWith("\x1b[K"), JSON.stringify(text));
    assert.ok(text.length - "\r\x1b[K".length <= 60, text);
  }
  assert.match(stream.written[1] as string, /step {3}2\/100/);
  assert.equal(stream.written[2], "\n");
});

test("off a terminal each update is a plain line of the given width", () => {
  const stream = captureStream(false);
  const progress = new Progress({ stream, width: 70 });
  assert.equal(progress.mode, "lines");
  progress.update(running);
  progress.update({ ...running, step: 26, stage: "update" });
  progress.done();
  assert.deepEqual(stream.written, [
    `${renderProgressLine(running, 70)}\n`,
    `${renderProgressLine({ ...running, step: 26, stage: "update" }, 70)}\n`,
  ]);
});

test("notebook mode outside a notebook writes text lines instead", () => {
  const stream = captureStream(false);
  const progress = new Progress({ mode: "notebook", stream, width: 80 });
  progress.update(running);
  assert.deepEqual(stream.written, [`${renderProgressLine(running, 80)}\n`]);
});
