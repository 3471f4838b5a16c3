// The package's public surface.
export * from "./native/engine.js";
export * from "./native/model.js";
