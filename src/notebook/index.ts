// What a notebook uses to look at a run: rich outputs in tslab, plotly charts and reports of the
// metrics log, and the live progress display (shared with the CLI).
export * from "./display.js";
export * from "./export.js";
export * from "./plot.js";
export * from "./progress.js";
