"""Reference outputs of transformers' Qwen2-VL image processor (PIL backend) for the preprocessing test.

usage: image_processor_reference.py OUT_DIR
Writes OUT_DIR/<name>.png|.jpg (the encoded inputs), cases.json (per case: the files, processor
settings, image_grid_thw, and where its pixel_values sit in pixels.bin as float32), pixels.bin, and
for each JPEG <name>.rgb (Pillow's decoded RGB bytes) so that decoding and processing can be
compared apart.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


def pattern(height, width, seed):
    """Smooth gradients, a hard-edged square and noise: every resampling tap matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.int32)
    img[height // 4: height // 2, width // 3: 2 * width // 3] = [250, 10, 30]
    img += rng.integers(-40, 40, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    # Odd sizes and aspect ratios; modes Pillow converts to RGB (RGBA, L, P).
    for name, (h, w) in {"odd": (37, 53), "tall": (121, 23), "wide": (19, 203), "square": (64, 64),
                         "big": (333, 517)}.items():
        images[name] = Image.fromarray(pattern(h, w, len(name)))
    images["rgba"] = Image.fromarray(np.dstack([pattern(45, 31, 7), pattern(45, 31, 8)[..., :1]]), "RGBA")
    images["grey"] = Image.fromarray(pattern(29, 71, 9)[..., 0], "L")
    images["palette"] = Image.fromarray(pattern(50, 40, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)

    files = {}
    for name, img in images.items():
        path = out / f"{name}.png"
        img.save(path)
        files[name] = path.name
    for name in ["odd", "big"]:
        path = out / f"{name}.jpg"
        images[name].save(path, quality=90)
        files[f"{name}-jpeg"] = path.name
        with Image.open(path) as decoded:
            (out / f"{name}.rgb").write_bytes(np.asarray(decoded.convert("RGB")).tobytes())

    # Settings: the defaults, a small max_pixels that forces a downscale, a min_pixels that forces
    # an upscale, and another patch / merge size.
    settings = {
        "defaults": {},
        "max": {"max_pixels": 28 * 28 * 12},
        "min": {"min_pixels": 28 * 28 * 30, "max_pixels": 28 * 28 * 200},
        "patch8": {"patch_size": 8, "merge_size": 2, "min_pixels": 16 * 16 * 2, "max_pixels": 16 * 16 * 64},
    }
    cases, blobs, offset = [], [], 0
    for setting, kwargs in settings.items():
        processor = Qwen2VLImageProcessorPil(**kwargs)
        for group in [["odd", "tall", "wide"], ["square", "rgba", "grey", "palette"], ["big"], ["odd-jpeg", "big-jpeg"]]:
            pil = [Image.open(out / files[n]) for n in group]
            result = processor(images=pil, return_tensors="np")
            values = result["pixel_values"].astype("<f4")
            blobs.append(values.tobytes())
            cases.append({"setting": setting, "kwargs": kwargs, "files": [files[n] for n in group],
                          "grids": result["image_grid_thw"].tolist(), "shape": list(values.shape), "offset": offset})
            offset += values.nbytes
            if group[0].endswith("-jpeg"):
                # The same images decoded by Pillow, processed from their RGB pixels.
                rgb = [np.asarray(Image.open(out / files[n]).convert("RGB")) for n in group]
                values = processor(images=rgb, return_tensors="np")["pixel_values"].astype("<f4")
                blobs.append(values.tobytes())
                cases.append({"setting": setting, "kwargs": kwargs, "files": [files[n] for n in group],
                              "fromRgb": [f"{n.removesuffix('-jpeg')}.rgb" for n in group],
                              "sizes": [list(np.asarray(Image.open(out / files[n])).shape[:2]) for n in group],
                              "grids": result["image_grid_thw"].tolist(), "shape": list(values.shape),
                              "offset": offset})
                offset += values.nbytes
    (out / "pixels.bin").write_bytes(b"".join(blobs))
    (out / "cases.json").write_text(json.dumps(cases))


if __name__ == "__main__":
    main()
