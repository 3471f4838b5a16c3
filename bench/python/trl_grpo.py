# TRL GRPOTrainer baseline for bench/cpu.ts: the quickstart's next-digit task ("472=" -> "3") set up
# as tiller's quickstart config (src/rl/tasks/next-digit.ts): PROMPTS prompts x SAMPLES samples per
# step, one response token at temperature 1, lr 3e-3 constant, no weight decay, clip 0.2/0.28,
# token-level loss, no KL, fp32 on the CPU with THREADS threads. TRL comes from the --target folder
# on PYTHONPATH (bench/python/trl-requirements.txt).
# usage: trl_grpo.py MODEL_DIR PROMPTS SAMPLES STEPS THREADS -> {"seconds_per_step", "reward_first", "reward_last"}
import json
import logging
import os
import sys
import tempfile
import time

import torch

model_dir, prompts, samples, steps, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
logging.disable(logging.WARNING)

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

rows = [{"prompt": [{"role": "user", "content": f"{n:03d}="}], "answer": str((n + 1) % 10)} for n in range(1000)]


def next_digit(completions, answer, **_):
    # tiller's nextDigitScore: 1 when the response starts with the right digit.
    return [1.0 if c[0]["content"].strip()[:1] == a else 0.0 for c, a in zip(completions, answer)]


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self.rewards, self._start = [], [], 0.0

    def on_step_begin(self, args, state, control, **_):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **_):
        self.times.append(time.perf_counter() - self._start)

    def on_log(self, args, state, control, logs=None, **_):
        if logs and "reward" in logs:
            self.rewards.append(logs["reward"])


with tempfile.TemporaryDirectory() as out:
    config = GRPOConfig(
        output_dir=out, use_cpu=True, bf16=False, fp16=False, seed=1, report_to="none",
        per_device_train_batch_size=prompts * samples, num_generations=samples,
        gradient_accumulation_steps=1, num_iterations=1, max_steps=steps,
        max_completion_length=1, temperature=1.0, learning_rate=3e-3, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, epsilon=0.2, epsilon_high=0.28, beta=0.0, loss_type="dapo",
        logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    timer = StepTimes()
    trainer = GRPOTrainer(model=model, reward_funcs=next_digit, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[timer])
    trainer.train()

# The first steps warm up (allocator, first batches); the median of the rest is the step time.
rest = sorted(timer.times[min(5, len(timer.times) // 2):])
k = max(1, min(10, len(timer.rewards) // 2))
print(json.dumps({
    "seconds_per_step": rest[len(rest) // 2],
    "reward_first": sum(timer.rewards[:k]) / k,
    "reward_last": sum(timer.rewards[-k:]) / k,
}))
