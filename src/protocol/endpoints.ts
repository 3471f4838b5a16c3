// Where a controller listens. One address names it; the worker and event sockets sit beside it at
// derived endpoints (tcp: the next two ports; ipc: sibling paths), so a worker or a client needs
// only the one address a user types.

export interface Endpoints {
  clients: string;
  workers: string;
  events: string;
}

export function endpointsOf(address: string): Endpoints {
  const tcp = /^tcp:\/\/(.+):(\d+)$/.exec(address);
  if (tcp) {
    const port = Number(tcp[2]);
    if (!(port > 0 && port + 2 <= 65535)) {
      throw new RangeError(
        `address: ${address} needs a fixed port from 1 to 65533 (the next two are used too)`,
      );
    }
    return {
      clients: address,
      workers: `tcp://${tcp[1]}:${port + 1}`,
      events: `tcp://${tcp[1]}:${port + 2}`,
    };
  }
  if (/^ipc:\/\/.+/.test(address)) {
    return { clients: address, workers: `${address}.workers`, events: `${address}.events` };
  }
  throw new TypeError(`address: ${JSON.stringify(address)} must look like tcp://HOST:PORT or ipc:///PATH`);
}

/** True when only this machine can reach the address: ipc, or tcp on a loopback host. */
export function isLocalOnly(address: string): boolean {
  if (address.startsWith("ipc://")) return true;
  const host = /^tcp:\/\/(.+):\d+$/.exec(address)?.[1];
  if (!host) return false;
  return host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The address a peer on this machine connects to when the controller bound a wildcard. */
export function connectableFrom(address: string): string {
  return address.replace(/^tcp:\/\/(\*|0\.0\.0\.0):/, "tcp://127.0.0.1:");
}
