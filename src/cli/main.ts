#!/usr/bin/env node
// The `tiller` command. Each subcommand is one function; `tiller help` lists them.
import { engineInfo } from "../index.js";
import { generateCommand, logprobsCommand } from "./model-commands.js";
import { planCommand, planHelp } from "./plan.js";
import { quickstart } from "./quickstart.js";
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

const commands: Record<string, { run: Command; help: string }> = {
  info: { run: info, help: "show the engine build and the devices it sees" },
  quickstart: {
    run: quickstart,
    help: "train a tiny model with GRPO on the built-in task, on the embedded default: [--steps N] [--run-dir DIR]",
  },
  controller: {
    run: controller,
    help: "run the controller: [--bind ADDR] [--workers N | --gpus LIST | --cpu [N]] [--key F --allow F [--allow-workers F]] [--root DIR]... [--reward-root DIR]...",
  },
  worker: { run: worker, help: "run a worker: --controller ADDR [--rank N] [--key F --server-key F]" },
  keys: { run: keys, help: "make a CURVE key pair: [--dir DIR] [--name NAME]" },
  logprobs: {
    run: logprobsCommand,
    help: "--model DIR --input in.jsonl --output out.jsonl: per-token logprobs and entropy of {tokens}",
  },
  plan: {
    run: planCommand,
    help: `memory per rank, communication and step time of a layout, or --search for the layouts that fit: ${planHelp}`,
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
