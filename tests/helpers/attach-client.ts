// A second client process for the reattach test: connect() with no address, print what it sees.
import { connect } from "../../src/client/client.js";

const cluster = await connect(undefined, { start: false, timeoutMs: 10_000 });
const state = await cluster.status();
process.stdout.write(`${JSON.stringify({ started: cluster.started, state })}\n`);
cluster.close();
