# Reference for tests/native/cli.test.ts: a tiny random Qwen3 with the real Qwen3 vocabulary and
# tokenizer in DIR/model, and HF's logprobs/entropy and greedy continuations in DIR/reference.json.
# usage: cli_reference.py DIR TOKENIZER_JSON TOKENIZER_CONFIG_JSON
import json
import os
import shutil
import sys

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

out, tokenizer_json, tokenizer_config = sys.argv[1:4]
model_dir = os.path.join(out, "model")
torch.manual_seed(0)
config = Qwen3Config(
    vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=True,
    eos_token_id=151645,
)
model = Qwen3ForCausalLM(config).eval()
model.save_pretrained(model_dir)
shutil.copy(tokenizer_json, os.path.join(model_dir, "tokenizer.json"))
shutil.copy(tokenizer_config, os.path.join(model_dir, "tokenizer_config.json"))
tokenizer = AutoTokenizer.from_pretrained(model_dir)

sequences = [[5, 900, 151000, 42, 7], [1, 2], [77] * 9]
ref = {"sequences": sequences, "logprobs": [], "entropy": [], "prompts": [], "greedy": []}
with torch.no_grad():
    for s in sequences:
        logits = model(torch.tensor([s])).logits[0, :-1].double()
        logp = torch.log_softmax(logits, -1)
        ref["logprobs"].append(logp.gather(-1, torch.tensor(s[1:])[:, None])[:, 0].tolist())
        ref["entropy"].append((-(logp.exp() * logp).sum(-1)).tolist())
    for prompt in [tokenizer.encode("Hello world"), [10, 20, 30, 40, 50, 60, 70]]:
        ids = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
        ref["prompts"].append(prompt)
        ref["greedy"].append(ids)
ref["helloText"] = tokenizer.decode(ref["greedy"][0], skip_special_tokens=True)
with open(os.path.join(out, "reference.json"), "w") as f:
    json.dump(ref, f)
print("ok")
