// A stand-in for a tslab kernel inside a test process: the `__tslab__` global that tslab's executor
// sets, a public tslab module, and (optionally) its jupyter module with the iopub writer, placed in
// the CommonJS module cache as the real kernel has them. Records what would reach the front end.
import { createRequire } from "node:module";

export interface SentOutput {
  msgType: "display_data" | "update_display_data";
  data: Record<string, unknown>;
  displayId: string | undefined;
}

export interface FakeKernel {
  /** Outputs sent through the kernel's bundle writer. */
  sent: SentOutput[];
  /** Calls to the public API: [displayId or null for tslab.display, MIME type, data]. */
  publicCalls: [string | null, string, string][];
  uninstall(): void;
}

const folder = "/fake-kernel/node_modules/tslab/dist";

/** Installs the fake; `withWriter: false` leaves out jupyter.js, as if tslab's internals changed. */
export function installFakeTslab(options: { withWriter: boolean }): FakeKernel {
  const sent: SentOutput[] = [];
  const publicCalls: [string | null, string, string][] = [];
  let nextId = 0;
  const makeDisplay = (id: string | null) => ({
    html: (s: string) => publicCalls.push([id, "text/html", s]),
    text: (s: string) => publicCalls.push([id, "text/plain", s]),
  });
  const tslab = { display: makeDisplay(null), newDisplay: () => makeDisplay(`public-${nextId++}`) };
  const jupyter = {
    lastWriteDisplayData: (
      content: { data: Record<string, unknown>; transient: { display_id?: string } },
      update: boolean,
    ) => {
      sent.push({
        msgType: update ? "update_display_data" : "display_data",
        data: content.data,
        displayId: content.transient.display_id,
      });
    },
  };
  const cache = createRequire(import.meta.url).cache as Record<string, unknown>;
  cache[`${folder}/public.js`] = { exports: tslab, filename: `${folder}/public.js` };
  if (options.withWriter)
    cache[`${folder}/jupyter.js`] = { exports: jupyter, filename: `${folder}/jupyter.js` };
  const global = globalThis as { __tslab__?: unknown };
  global.__tslab__ = {
    exports: {},
    require: (id: string) => {
      if (id === "tslab") return tslab;
      throw new Error(`the fake kernel only provides tslab, not ${id}`);
    },
  };
  return {
    sent,
    publicCalls,
    uninstall() {
      delete global.__tslab__;
      delete cache[`${folder}/public.js`];
      delete cache[`${folder}/jupyter.js`];
    },
  };
}
