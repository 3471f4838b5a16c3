// CURVE key handling: key pairs in files (`tiller keys`), loading allow-lists, applying keys to
// sockets, and the ZAP handler that admits only the public keys a controller was given. Without
// a ZAP handler CURVE would admit anyone who knows the server's public key.
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import * as zmq from "zeromq";

export interface KeyPair {
  publicKey: string;
  secretKey: string;
}

/** What a client or worker needs to reach a CURVE controller. */
export interface CurveClientKeys extends KeyPair {
  serverPublicKey: string;
}

/** What a controller needs: its own pair and the public keys it admits. */
export interface CurveServerKeys extends KeyPair {
  /** Clients admitted on the client and event sockets. */
  allowedPublicKeys: string[];
  /** Workers admitted on the worker socket; a client's key does not open it (default none). */
  allowedWorkerKeys?: string[];
}

/** The ZAP domains: which socket a handshake is for. */
export type ZapDomain = "clients" | "workers";

const z85Key = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;

export function checkPublicKey(key: string, where: string): string {
  const k = key.trim();
  if (!z85Key.test(k)) throw new TypeError(`${where}: not a 40-character Z85 CURVE key`);
  return k;
}

export function makeKeyPair(): KeyPair {
  return zmq.curveKeyPair();
}

/** Writes NAME.key (both halves, mode 0600) and NAME.pub (public half) in dir. */
export function writeKeyPair(
  dir: string,
  name: string,
  pair: KeyPair = makeKeyPair(),
): { secretFile: string; publicFile: string } {
  mkdirSync(dir, { recursive: true });
  const secretFile = join(dir, `${name}.key`);
  const publicFile = join(dir, `${name}.pub`);
  if (existsSync(secretFile))
    throw new Error(`${secretFile} exists; choose another --name or remove it first`);
  writeFileSync(secretFile, `${JSON.stringify(pair, null, 2)}\n`, { mode: 0o600 });
  chmodSync(secretFile, 0o600);
  writeFileSync(publicFile, `${pair.publicKey}\n`);
  return { secretFile, publicFile };
}

export function readKeyPair(file: string): KeyPair {
  let pair: Partial<KeyPair>;
  try {
    pair = JSON.parse(readFileSync(file, "utf8")) as Partial<KeyPair>;
  } catch (error) {
    throw new Error(`${file}: not a key file made by \`tiller keys\` (${(error as Error).message})`);
  }
  return {
    publicKey: checkPublicKey(String(pair.publicKey), `${file}: publicKey`),
    secretKey: checkPublicKey(String(pair.secretKey), `${file}: secretKey`),
  };
}

/** A public key from a .pub file, a .key file, or the key text itself. */
export function readPublicKey(source: string): string {
  if (!existsSync(source)) return checkPublicKey(source, "public key");
  const text = readFileSync(source, "utf8").trim();
  // Z85's alphabet holds "{", so a .pub file's key may start with it: a key first, JSON only then.
  if (z85Key.test(text)) return text;
  if (text.startsWith("{")) return readKeyPair(source).publicKey;
  return checkPublicKey(text, source);
}

/** Public keys from files, folders of .pub files, or key texts. */
export function readAllowList(sources: string[]): string[] {
  const keys = sources.flatMap((s) =>
    existsSync(s) && statSync(s).isDirectory()
      ? readdirSync(s)
          .filter((f) => f.endsWith(".pub"))
          .map((f) => readPublicKey(join(s, f)))
      : [readPublicKey(s)],
  );
  return [...new Set(keys)];
}

export function applyServerKeys(socket: zmq.Socket, keys: KeyPair, domain: ZapDomain): void {
  socket.zapDomain = domain;
  socket.curveServer = true;
  socket.curvePublicKey = keys.publicKey;
  socket.curveSecretKey = keys.secretKey;
}

export function applyClientKeys(socket: zmq.Socket, keys: CurveClientKeys): void {
  socket.curveServerKey = keys.serverPublicKey;
  socket.curvePublicKey = keys.publicKey;
  socket.curveSecretKey = keys.secretKey;
}

/** Z85 encoding (ZeroMQ RFC 32) of a 32-byte key, as ZAP hands keys over in binary. */
const z85Chars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
export function z85Encode(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 4) {
    let value = 0;
    for (let j = 0; j < 4; j++) value = value * 256 + (bytes[i + j] ?? 0);
    let chunk = "";
    for (let j = 0; j < 5; j++) {
      chunk = z85Chars[value % 85] + chunk;
      value = Math.floor(value / 85);
    }
    out += chunk;
  }
  return out;
}

/**
 * Answers ZAP requests (RFC 27) on inproc://zeromq.zap.01 for every socket in this process's
 * context: CURVE peers are admitted only when their public key is allowed for the socket's domain
 * (a client key does not open the worker socket, nor a worker key the client one); other
 * mechanisms (NULL on loopback and ipc) pass, as they never reach a non-loopback socket.
 */
export class ZapHandler {
  readonly #socket = new zmq.Reply();
  readonly #allowed: Record<ZapDomain, Set<string>>;
  /** How many CURVE handshakes were refused; for tests and the status view. */
  refused = 0;

  private constructor(allowed: Record<ZapDomain, string[]>) {
    this.#allowed = { clients: new Set(allowed.clients), workers: new Set(allowed.workers) };
  }

  static async start(allowed: Record<ZapDomain, string[]>): Promise<ZapHandler> {
    const handler = new ZapHandler(allowed);
    handler.#socket.linger = 0;
    await handler.#socket.bind("inproc://zeromq.zap.01");
    void handler.#serve();
    return handler;
  }

  async #serve(): Promise<void> {
    for await (const frames of this.#socket) {
      const [version, requestId, domain, , , mechanism, credentials] = frames;
      let status = "200";
      let text = "OK";
      let user = "";
      if (mechanism?.toString() === "CURVE") {
        const key = credentials ? z85Encode(credentials) : "";
        const name = domain?.toString();
        const allowed = name === "clients" || name === "workers" ? this.#allowed[name] : undefined;
        if (allowed?.has(key)) user = key;
        else {
          status = "400";
          text = "public key not allowed";
          this.refused++;
        }
      }
      await this.#socket.send([version ?? "1.0", requestId ?? "", status, text, user, ""]);
    }
  }

  /** Admits one more key on one socket (the controller's own local workers). */
  allow(domain: ZapDomain, publicKey: string): void {
    this.#allowed[domain].add(publicKey);
  }

  close(): void {
    this.#socket.close();
  }
}
