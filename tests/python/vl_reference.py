"""Reference outputs of HF transformers for the Qwen2.5-VL parity test.

usage: vl_reference.py OUT_DIR            one tiny random case, written to OUT_DIR
       vl_reference.py reload FOLDER CASE_DIR
                                          loads FOLDER (a saved model) with from_pretrained and prints
                                          the batch's logprobs as JSON, and whether its tensors equal
                                          CASE_DIR/saved-params (our parameters, written by the test)

A case: config.json; weights.bin/.json (checkpoint names: visual.*, model.*, lm_head.weight);
grads.bin/.json; vision.bin/.json (the vision tower's outputs for all images in one call);
reference.json (packed batch with image placeholders, the images' pixels and grids, per-token
logprobs and entropy, a weighted-NLL loss, greedy continuations of the prompts).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as tf

torch.set_num_threads(2)

IMAGE, VIDEO, START, END = 250, 251, 252, 253
VOCAB = 256
TEMPERATURE = 0.7
NEW_TOKENS = 32
# (t, h, w) in patches: odd merged grids (3 x 5), windows cut at the edges, one merged token.
GRIDS = [(1, 4, 4), (1, 6, 10), (1, 8, 4), (1, 2, 2)]
MERGE = 2


def config():
    return tf.Qwen2_5_VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, rms_norm_eps=1e-6, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                         bos_token_id=None, eos_token_id=None),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=MERGE, window_size=16, out_hidden_size=64,
                           fullatt_block_indexes=[1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END,
        tie_word_embeddings=False, attn_implementation="eager")


def checkpoint_name(name):
    """transformers' in-memory names -> the checkpoint names its save_pretrained writes."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def write_tensors(path: Path, named):
    manifest, offset = [], 0
    with open(path.with_suffix(".bin"), "wb") as f:
        for name, t in named:
            data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
            f.write(data)
            manifest.append({"name": name, "shape": list(t.shape), "offset": offset})
            offset += len(data)
    path.with_suffix(".json").write_text(json.dumps(manifest))


def read_tensors(path: Path):
    manifest = json.loads(path.with_suffix(".json").read_text())
    data = np.fromfile(path.with_suffix(".bin"), dtype="<f4")
    out = {}
    for m in manifest:
        n = int(np.prod(m["shape"])) if m["shape"] else 1
        start = m["offset"] // 4
        out[m["name"]] = torch.from_numpy(data[start:start + n].copy()).view(m["shape"])
    return out


def image_tokens(grid):
    t, h, w = grid
    return [START] + [IMAGE] * (t * h * w // MERGE ** 2) + [END]


def sequence_inputs(ids, images, pixels_of):
    """HF keyword arguments for one sequence with its images (a list of indices into GRIDS)."""
    ids = torch.tensor(ids)[None]
    kwargs = {"input_ids": ids, "mm_token_type_ids": (ids == IMAGE).int()}
    if images:
        kwargs["pixel_values"] = torch.cat([pixels_of[i] for i in images])
        kwargs["image_grid_thw"] = torch.tensor([GRIDS[i] for i in images])
    return kwargs


def seq_logprobs(model, ids, images, pixels_of, temperature):
    logits = model(**sequence_inputs(ids, images, pixels_of)).logits[0, :-1].float() / temperature
    log_probs = torch.log_softmax(logits, -1)
    target = torch.tensor(ids[1:])[:, None]
    return log_probs.gather(1, target)[:, 0], -(log_probs.exp() * log_probs).sum(-1)


def make_batch(gen):
    def text(n):
        return torch.randint(0, 240, (n,), generator=gen).tolist()

    # Prompt A: one image inside text; B: two images in one prompt; C: text only. Each continues
    # with a response of text tokens (the training-side batch holds prompt + response).
    prompts = [
        (text(3) + image_tokens(GRIDS[0]) + text(4), [0]),
        (text(2) + image_tokens(GRIDS[1]) + text(2) + image_tokens(GRIDS[2]) + text(3), [1, 2]),
        (text(6), []),
        (image_tokens(GRIDS[3]) + text(2), [3]),
    ]
    responses = [text(n) for n in (5, 7, 4, 6)]
    return prompts, responses


def run_case(out: Path, seed: int):
    torch.manual_seed(seed)
    cfg = config()
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    model = tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    named = [(checkpoint_name(n), p) for n, p in model.named_parameters()]
    write_tensors(out / "weights", named)

    gen = torch.Generator().manual_seed(seed)
    patch_dim = 3 * 2 * 4 * 4
    pixels_of = [torch.randn(t * h * w, patch_dim, generator=gen) for t, h, w in GRIDS]
    prompts, responses = make_batch(gen)
    seqs = [(p + r, images) for (p, images), r in zip(prompts, responses)]
    lengths = [len(s) for s, _ in seqs]
    batch_images = [i for _, images in seqs for i in images]
    ref = {
        "tokens": [t for s, _ in seqs for t in s],
        "cuSeqlens": np.cumsum([0] + lengths).tolist(),
        "pixels": torch.cat([pixels_of[i] for i in batch_images]).flatten().tolist(),
        "grids": [g for i in batch_images for g in GRIDS[i]],
        "imageToken": IMAGE,
        "temperature": TEMPERATURE,
        "prompts": [p for p, _ in prompts],
        "promptPixels": torch.cat([pixels_of[i] for _, images in prompts for i in images]).flatten().tolist(),
        "promptGrids": [g for _, images in prompts for i in images for g in GRIDS[i]],
    }
    weights = [torch.rand(n - 1, generator=gen) for n in lengths]
    ref["lossWeights"] = torch.cat(weights).tolist()

    with torch.no_grad():
        # The vision tower alone, over every image of the batch in one varlen call.
        vision = model.model.get_image_features(
            torch.cat([pixels_of[i] for i in batch_images]), torch.tensor([GRIDS[i] for i in batch_images])
        ).pooler_output
        write_tensors(out / "vision", [("image_embeds", torch.cat(vision))])
        lps, ents = zip(*(seq_logprobs(model, s, images, pixels_of, 1.0) for s, images in seqs))
        ref["logprobs"] = torch.cat(lps).tolist()
        ref["entropy"] = torch.cat(ents).tolist()
        # Positions as get_rope_index computes them, for the record.
        ref["ropeDeltas"] = []
        for s, images in seqs:
            kw = sequence_inputs(s, images, pixels_of)
            _, delta = model.model.get_rope_index(kw["input_ids"], kw["mm_token_type_ids"], kw.get("image_grid_thw"))
            ref["ropeDeltas"].append(int(delta.item()))

    model.zero_grad()
    loss = sum(-(w * seq_logprobs(model, s, images, pixels_of, TEMPERATURE)[0]).sum()
               for (s, images), w in zip(seqs, weights))
    loss.backward()
    ref["loss"] = loss.item()
    write_tensors(out / "grads", [(checkpoint_name(n), p.grad) for n, p in model.named_parameters()])

    greedy = []
    with torch.no_grad():
        for p, images in prompts:
            kw = sequence_inputs(p, images, pixels_of)
            o = model.generate(**kw, attention_mask=torch.ones_like(kw["input_ids"]), do_sample=False,
                               max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
            greedy.append(o[0, len(p):].tolist())
    ref["greedy"] = greedy
    (out / "reference.json").write_text(json.dumps(ref))


def reload(folder: Path, case_dir: Path):
    """transformers' own loading of a folder we saved: logprobs of the case's batch, tensor equality."""
    model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    ref = json.loads((case_dir / "reference.json").read_text())
    ours = read_tensors(case_dir / "saved-params")
    theirs = {checkpoint_name(n): p for n, p in model.state_dict().items()}
    mismatched = [n for n, t in ours.items() if n not in theirs or not torch.equal(theirs[n].float(), t)]
    missing = [n for n in theirs if n not in ours and not (model.config.tie_word_embeddings and n == "lm_head.weight")]
    pixels = torch.tensor(ref["pixels"]).view(-1, 3 * 2 * 4 * 4)
    grids = torch.tensor(ref["grids"]).view(-1, 3)
    cu, tokens = ref["cuSeqlens"], ref["tokens"]
    lps, used, patch = [], 0, 0
    with torch.no_grad():
        for a, b in zip(cu[:-1], cu[1:]):
            ids = torch.tensor(tokens[a:b])[None]
            count = int((ids == IMAGE).sum())
            kwargs = {"input_ids": ids, "mm_token_type_ids": (ids == IMAGE).int()}
            mine = []
            while count > 0:
                t, h, w = grids[used].tolist()
                mine.append(used)
                count -= t * h * w // MERGE ** 2
                used += 1
            if mine:
                n_patches = int(sum(int(torch.prod(grids[i])) for i in mine))
                kwargs["pixel_values"] = pixels[patch:patch + n_patches]
                kwargs["image_grid_thw"] = grids[mine[0]:mine[-1] + 1]
                patch += n_patches
            logits = model(**kwargs).logits[0, :-1].float()
            lps.append(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0])
    print(json.dumps({"logprobs": torch.cat(lps).tolist(), "mismatched": mismatched, "missing": missing}))


def main():
    if sys.argv[1] == "reload":
        reload(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    run_case(Path(sys.argv[1]), seed=4321)


if __name__ == "__main__":
    main()
