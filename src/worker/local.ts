// The worker's command table called in this process: one rank, the same engine and the same
// argument checks as a worker behind the controller, without sockets. For scripts and tests that
// drive an experiment without a cluster; the controller uses its pool instead.
import type { RankCall } from "../controller/experiment.js";
import { workerCommandArgs } from "../protocol/messages.js";
import { commandTable, WorkerState } from "./commands.js";

export interface LocalRank {
  call: RankCall;
  state: WorkerState;
  dispose(): void;
}

export function localRank(): LocalRank {
  const state = new WorkerState("127.0.0.1");
  const call: RankCall = async (rank, command, args) => {
    if (rank !== 0) throw new Error(`rank ${rank}: a local rank is rank 0 only`);
    const checked = workerCommandArgs[command](args, "args");
    const handler = commandTable[command] as (s: WorkerState, a: unknown) => Promise<never>;
    return handler(state, checked);
  };
  return { call, state, dispose: () => state.dispose() };
}
