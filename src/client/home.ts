// The embedded default's home: $TILLER_HOME (else ~/.tiller) holds controller.json (address + pid
// of the local controller), its ipc sockets and its log, so a restarted kernel finds it again.
import { homedir } from "node:os";
import { join } from "node:path";

export function tillerHome(): string {
  return process.env.TILLER_HOME ?? join(homedir(), ".tiller");
}

export function defaultAddress(home = tillerHome()): string {
  return `ipc://${join(home, "controller.sock")}`;
}

export function controllerRecordFile(home = tillerHome()): string {
  return join(home, "controller.json");
}

export function controllerLogFile(home = tillerHome()): string {
  return join(home, "controller.log");
}
