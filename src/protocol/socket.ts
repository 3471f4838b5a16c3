// One writer at a time: a zeromq.js socket refuses a send while another is in progress, and
// replies, heartbeats and events are sent from independent async paths. Sends queue here.
import type * as zmq from "zeromq";

type Frames = (Uint8Array | string)[];

export class SendQueue {
  #tail: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(private readonly socket: zmq.Writable & zmq.Socket) {}

  /** Queues one multipart message; failures (peer gone, socket closed) are reported, not thrown. */
  send(frames: Frames): Promise<boolean> {
    const sent = this.#tail.then(async () => {
      if (this.#closed || this.socket.closed) return false;
      try {
        await this.socket.send(frames);
        return true;
      } catch {
        return false;
      }
    });
    this.#tail = sent.then(() => undefined);
    return sent;
  }

  /** Waits for queued sends, then stops taking more. */
  async drain(): Promise<void> {
    await this.#tail;
    this.#closed = true;
  }
}
