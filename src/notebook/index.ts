// What a notebook uses to look at a run: rich outputs in tslab, and plotly charts and reports of
// the metrics log.
export * from "./display.js";
export * from "./plot.js";
