#!/usr/bin/env node
// The `tiller` command. Each subcommand is one function; `tiller help` lists them.
import { engineInfo, matmulProbe } from "../index.js";
import { generateCommand, logprobsCommand } from "./model-commands.js";
import { controller, keys, worker } from "./runtime.js";

type Command = (args: string[]) => Promise<void>;

async function info(): Promise<void> {
  const i = engineInfo();
  console.log(
    `torch ${i.torchVersion} · ${i.cudaCompiled ? "CUDA build" : "CPU build"} · ${i.cpuThreads} CPU threads`,
  );
  for (const d of i.devices) {
    const memory = d.totalMemoryBytes ? `, ${(d.totalMemoryBytes / 2 ** 30).toFixed(0)} GiB` : "";
    console.log(
      `  ${d.device.padEnd(8)} ${d.name}${memory}${d.computeCapability ? `, sm ${d.computeCapability}` : ""}`,
    );
  }
}

async function quickstart(): Promise<void> {
  await info();
  const gpu = engineInfo().cudaAvailable;
  const shape = gpu ? 8192 : 1024;
  const r = await matmulProbe({
    device: gpu ? "cuda:0" : "cpu",
    dtype: gpu ? "bfloat16" : "float32",
    m: shape,
    n: shape,
    k: shape,
    iterations: gpu ? 50 : 5,
  });
  console.log(`dense rate: ${(r.tflops * 1000).toFixed(1)} GFLOP/s (${gpu ? "bf16" : "fp32"} ${shape}³)`);
  console.log("the engine is ready; the GRPO quickstart arrives with the RL loop (issue 5)");
}

const commands: Record<string, { run: Command; help: string }> = {
  info: { run: info, help: "show the engine build and the devices it sees" },
  quickstart: { run: quickstart, help: "check the set-up end to end on the embedded default" },
  controller: {
    run: controller,
    help: "run the controller: [--bind ADDR] [--workers N | --gpus LIST | --cpu [N]] [--key F --allow F]",
  },
  worker: { run: worker, help: "run a worker: --controller ADDR [--rank N] [--key F --server-key F]" },
  keys: { run: keys, help: "make a CURVE key pair: [--dir DIR] [--name NAME]" },
  logprobs: {
    run: logprobsCommand,
    help: "--model DIR --input in.jsonl --output out.jsonl: per-token logprobs and entropy of {tokens}",
  },
  generate: {
    run: generateCommand,
    help: "--model DIR --input in.jsonl --output out.jsonl --max-new-tokens N [--temperature --top-p --top-k --seed]",
  },
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  const command = name ? commands[name] : undefined;
  if (!command) {
    if (name && name !== "help" && name !== "--help") console.error(`tiller: unknown command '${name}'\n`);
    console.log("usage: tiller <command> [options]\n");
    for (const [key, c] of Object.entries(commands)) console.log(`  ${key.padEnd(12)} ${c.help}`);
    return name && name !== "help" && name !== "--help" ? 2 : 0;
  }
  await command.run(rest);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`tiller: ${error.message}`);
    process.exit(1);
  },
);
