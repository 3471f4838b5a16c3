// What a notebook uses to look at a run: rich outputs in tslab, plotly charts and reports of the
// metrics log, the live progress display (shared with the CLI), the rollout inspector, and table
// export to files other tools read.
export * from "./display.js";
export * from "./export.js";
export * from "./inspect.js";
export * from "./plan-view.js";
export * from "./plot.js";
export * from "./progress.js";
export * from "./report.js";
export * from "./views.js";
