// The built-in verifiable tasks: next-digit (one-token answers, the quickstart's) and count-up
// (three-digit answers, for the inspector and the length views).

export * from "./colour-square.js";
export * from "./count-up.js";
export * from "./next-digit.js";
