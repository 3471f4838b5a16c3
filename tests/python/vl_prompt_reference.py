"""Reference prompts of transformers' Qwen2.5-VL processor for verl-layout rows with images.

usage: vl_prompt_reference.py TOKENIZER_DIR OUT_DIR
TOKENIZER_DIR holds tokenizer.json, tokenizer_config.json and chat_template.jinja. Writes
OUT_DIR/rows.jsonl (verl's layout: `<image>` in the text, base64 PNGs in `images`) and
OUT_DIR/reference.json: per row, the input_ids and image_grid_thw the processor gives for the
messages verl's RLHFDataset builds (each message's text split on <image> into content parts).
"""

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

# The video processor needs torchvision, which the reference environment lacks; no video is used,
# so the processor's check of its parts is skipped.
ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None


def verl_messages(messages):
    """verl's RLHFDataset._build_messages for a row with images."""
    out = []
    for m in messages:
        parts = [p for p in re.split("(<image>)", m["content"]) if p != ""]
        out.append({"role": m["role"], "content": [{"type": "image"} if p == "<image>" else {"type": "text", "text": p}
                                                   for p in parts]})
    return out


def png(h, w, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def main():
    tok_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                                    video_processor=None, chat_template=(tok_dir / "chat_template.jinja").read_text())
    rows = [
        {"prompt": [{"role": "user", "content": "<image>Find the area of the triangle."}], "sizes": [(61, 93)]},
        {"prompt": [{"role": "system", "content": "Think step by step."},
                    {"role": "user", "content": "Compare <image> with <image>: which is brighter?"}],
         "sizes": [(40, 40), (123, 57)]},
        {"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "sizes": []},
    ]
    reference, lines = [], []
    for i, r in enumerate(rows):
        images = [png(h, w, 10 * i + j) for j, (h, w) in enumerate(r["sizes"])]
        lines.append(json.dumps({"data_source": "geo", "prompt": r["prompt"], "reward_model": {"ground_truth": "1"},
                                 "images": [{"bytes": base64.b64encode(b).decode()} for b in images]}))
        messages = verl_messages(r["prompt"]) if images else r["prompt"]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pil = [Image.open(io.BytesIO(b)) for b in images]
        result = processor(text=[text], images=pil or None, return_tensors="np")
        reference.append({"inputIds": result["input_ids"][0].tolist(),
                          "grids": result["image_grid_thw"].tolist() if images else []})
    (out / "rows.jsonl").write_text("\n".join(lines) + "\n")
    (out / "reference.json").write_text(json.dumps(reference))


if __name__ == "__main__":
    main()
