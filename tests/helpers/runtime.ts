// Real processes for the runtime tests: controllers and workers started through the CLI, every one
// tracked so `killAll()` in an after hook leaves nothing behind; waiting helpers with deadlines;
// a tiny random Llama to load on workers.
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { repoRoot } from "../../src/native/binding.js";

const cli = join(repoRoot, "dist", "src", "cli", "main.js");
const started = new Set<ChildProcess>();

export interface Spawned {
  child: ChildProcess;
  pid: number;
  output: () => string;
  exited: Promise<number | null>;
}

/** Runs `tiller <args>`; its output is kept for failure messages. */
export function tiller(args: string[], env: NodeJS.ProcessEnv = {}): Spawned {
  return node(cli, args, env);
}

/** A node script run with this process's environment (a second client, say). */
export function node(script: string, args: string[], env: NodeJS.ProcessEnv = {}): Spawned {
  const child = spawn(process.execPath, [script, ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.add(child);
  let text = "";
  child.stdout?.on("data", (d: Buffer) => {
    text += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    text += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      started.delete(child);
      resolve(code);
    });
  });
  return { child, pid: child.pid ?? 0, output: () => text, exited };
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Kills one pid we know we started (or that a controller we started spawned). */
export function killPid(pid: number, signal: NodeJS.Signals = "SIGKILL"): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Kills every process started here that still runs. */
export function killAll(): void {
  for (const child of started) child.kill("SIGKILL");
}

export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | Promise<T | undefined>,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A free TCP port on loopback with the next two free as well (a controller takes three). */
export async function freePortTriple(): Promise<number> {
  const { createServer } = await import("node:net");
  const tryPort = (port: number) =>
    new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "0.0.0.0", () => s.close(() => resolve(true)));
    });
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    if ((await tryPort(base)) && (await tryPort(base + 1)) && (await tryPort(base + 2))) return base;
  }
  throw new Error("no three free consecutive ports found");
}

/** A tiny random Llama (tied embeddings): config.json and every tensor, seeded. */
/** A float32 tensor by name, as worker commands take them. */
export interface Float32Named {
  name: string;
  dtype: "float32";
  shape: number[];
  data: Float32Array;
}

export function tinyLlama(seed = 1): { config: Record<string, unknown>; tensors: Float32Named[] } {
  const hidden = 32;
  const intermediate = 64;
  const heads = 4;
  const kvHeads = 2;
  const headDim = hidden / heads;
  const vocab = 64;
  const layers = 2;
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    num_hidden_layers: layers,
    vocab_size: vocab,
    rms_norm_eps: 1e-6,
    max_position_embeddings: 128,
    rope_theta: 10000,
    tie_word_embeddings: true,
  };
  let state = seed >>> 0 || 1;
  const random = () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32 - 0.5;
  };
  const tensor = (name: string, shape: number[], ones = false): Float32Named => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = ones ? 1 : random() * 0.2;
    return { name, dtype: "float32", shape, data };
  };
  const tensors = [
    tensor("model.embed_tokens.weight", [vocab, hidden]),
    tensor("model.norm.weight", [hidden], true),
  ];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    tensors.push(
      tensor(`${p}input_layernorm.weight`, [hidden], true),
      tensor(`${p}post_attention_layernorm.weight`, [hidden], true),
      tensor(`${p}self_attn.q_proj.weight`, [heads * headDim, hidden]),
      tensor(`${p}self_attn.k_proj.weight`, [kvHeads * headDim, hidden]),
      tensor(`${p}self_attn.v_proj.weight`, [kvHeads * headDim, hidden]),
      tensor(`${p}self_attn.o_proj.weight`, [hidden, heads * headDim]),
      tensor(`${p}mlp.gate_proj.weight`, [intermediate, hidden]),
      tensor(`${p}mlp.up_proj.weight`, [intermediate, hidden]),
      tensor(`${p}mlp.down_proj.weight`, [hidden, intermediate]),
    );
  }
  return { config, tensors };
}
