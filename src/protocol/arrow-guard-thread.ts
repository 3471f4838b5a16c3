// The decoding half of arrow-guard.ts: a thread with a small heap that decodes a stream in full,
// so that a stream that would make the decoder run away does so here, where it can be ended.
import { parentPort } from "node:worker_threads";
import { tableFromIPC } from "apache-arrow";

parentPort?.on("message", (message: { id: number; bytes: Uint8Array }) => {
  try {
    const table = tableFromIPC(message.bytes);
    // Touch every column so that lazily read buffers are read here too.
    let values = 0;
    for (const field of table.schema.fields) values += table.getChild(field.name)?.toArray().length ?? 0;
    parentPort?.postMessage({ id: message.id, ok: true, rows: table.numRows, values });
  } catch (error) {
    parentPort?.postMessage({ id: message.id, ok: false, message: (error as Error).message });
  }
});
