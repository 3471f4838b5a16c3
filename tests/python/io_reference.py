"""Reference side of tests/native/io.test.ts: safetensors and HF checkpoints written and read by
the Python libraries, so that tiller's reader and writer are checked against them byte for byte.

  io_reference.py write-dtypes PATH        write every dtype; print {name: {dtype, shape, hex}}
  io_reference.py read PATH                read with safetensors; print {metadata, header_bytes, keys, tensors}
  io_reference.py make-model DIR [SHARD]   save a tiny random Qwen3ForCausalLM (optionally sharded)
  io_reference.py compare-logits A B       load both folders; print max |logits_A - logits_B|
"""

import json
import struct
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def describe(t: torch.Tensor) -> dict:
    raw = t.contiguous().reshape(-1).view(torch.uint8)
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "hex": raw.numpy().tobytes().hex()}


def every_dtype() -> dict:
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, 65504.0, -3.5])
    out = {}
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        out[f"{name}.random"] = torch.randn(4, 5, 3, generator=g).to(dtype)
        out[f"{name}.special"] = special.to(dtype)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        info = torch.iinfo(dtype)
        values = torch.tensor([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, 7, 100, 3])
        out[f"{str(dtype).removeprefix('torch.')}.range"] = values.to(dtype).reshape(2, 4)
    out["bool.mask"] = torch.tensor([[True, False, True], [False, False, True]])
    out["float8_e4m3fn.values"] = torch.tensor([0.5, -2.0, 448.0, 0.0]).to(torch.float8_e4m3fn)
    out["scalar"] = torch.tensor(2.5)
    out["empty"] = torch.zeros(0, 3, dtype=torch.int32)
    return out


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "write-dtypes":
        tensors = every_dtype()
        save_file(tensors, args[0], metadata={"format": "pt", "note": "héllo \"world\""})
        print(json.dumps({name: describe(t) for name, t in tensors.items()}))
    elif command == "read":
        path = args[0]
        with open(path, "rb") as f:
            (header_bytes,) = struct.unpack("<Q", f.read(8))
            keys = list(json.loads(f.read(header_bytes)).keys())
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
        print(json.dumps({"metadata": metadata, "header_bytes": header_bytes, "keys": keys,
                          "tensors": {name: describe(t) for name, t in tensors.items()}}))
    elif command == "make-model":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(0)
        config = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=128, tie_word_embeddings=False)
        model = Qwen3ForCausalLM(config).eval()
        shard = args[1] if len(args) > 1 else "5GB"
        model.save_pretrained(args[0], max_shard_size=shard, safe_serialization=True)
    elif command == "compare-logits":
        from transformers import AutoModelForCausalLM

        ids = torch.tensor([[1, 17, 42, 99, 200, 3, 255, 0]])
        logits = []
        for path in args[:2]:
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
            # A weight the loader could not find would be randomly initialised: refuse that outright.
            problems = {k: v for k, v in info.items() if v}
            if problems:
                raise SystemExit(f"{path}: loading problems {problems}")
            model.eval()
            with torch.no_grad():
                logits.append(model(ids).logits)
        print(json.dumps({"max_abs_diff": (logits[0] - logits[1]).abs().max().item(),
                          "equal": bool(torch.equal(logits[0], logits[1])),
                          "shape": list(logits[0].shape)}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
