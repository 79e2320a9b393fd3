"""The candidate shapes for a built-in mini CLIP, measured as pretraining runs them: parameters, the fp16
file they would make, and the seconds of one contrastive step (batch 128, 64x64 images, 17-token captions
as the mini world's are, bf16 autocast, AdamW), on this machine's CPU. Rendering is left out (the step
alone); `clipfit_world.pretrain` overlaps it with training in its render workers.

    python benchmarks/mini_clip_shapes.py                     # 2 threads, the median of 5 steps after one
    python benchmarks/mini_clip_shapes.py --threads 1

A "compact" vocabulary (2,048 token ids, the size the mini world's words need) is measured beside CLIP's
49,408 to see what it frees; a shipped model with one would need its own tokenizer. Writes
benchmarks/results/mini_clip_shapes.json and prints a markdown table. Run it alone: another job on the
same cores inflates every step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from clipfit.text_encoding import encode_truncated

ROOT = Path(__file__).resolve().parents[1]
CLIP_VOCAB, COMPACT_VOCAB = 49408, 2048
# (width, image blocks, text blocks, vocabulary): mini-clip's shape first, then the candidates tried.
SHAPES = [(128, 4, 3, CLIP_VOCAB), (128, 6, 8, CLIP_VOCAB), (160, 6, 6, CLIP_VOCAB), (160, 6, 8, CLIP_VOCAB),
          (192, 6, 6, COMPACT_VOCAB), (192, 6, 8, COMPACT_VOCAB), (256, 6, 6, COMPACT_VOCAB)]
CAPTION_TOKENS = 17  # SOT, 15 words' tokens, EOT: the longest of a batch of the world's captions, about


def config(width: int, image_blocks: int, text_blocks: int, vocab: int) -> dict:
    head_width = 64 if width % 64 == 0 else 32
    return {"embed_dim": width,
            "vision_cfg": {"image_size": 64, "layers": image_blocks, "width": width, "head_width": head_width,
                           "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": vocab, "width": width, "heads": width // head_width,
                         "layers": text_blocks}}


def step_seconds(model: torch.nn.Module, vocab: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(128, 3, 64, 64)
    tokens = torch.zeros(128, 77, dtype=torch.long)
    tokens[:, 1:CAPTION_TOKENS - 1] = torch.randint(1, vocab - 2, (128, CAPTION_TOKENS - 2))
    tokens[:, CAPTION_TOKENS - 1] = vocab - 1  # EOT: the highest id, where the text feature is pooled
    labels = torch.arange(128)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fi, ft = model.encode_image(images), encode_truncated(model, tokens)
        logits = 10 * F.normalize(fi.float(), dim=-1) @ F.normalize(ft.float(), dim=-1).T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step pays for allocation


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    folder = Path(tempfile.mkdtemp())
    rows = []
    for width, image_blocks, text_blocks, vocab in SHAPES:
        name = f"shape-w{width}-i{image_blocks}-t{text_blocks}-v{vocab}"
        (folder / f"{name}.json").write_text(json.dumps(config(width, image_blocks, text_blocks, vocab)))
        open_clip.add_model_config(folder / f"{name}.json")
        torch.manual_seed(0)
        model = open_clip.create_model(name)
        params = sum(p.numel() for p in model.parameters())
        seconds = step_seconds(model, vocab, a.steps)
        rows.append({"width": width, "image_blocks": image_blocks, "text_blocks": text_blocks, "vocab": vocab,
                     "parameters": params, "fp16_mb": round(2 * params / 1e6, 1), "step_s": round(seconds, 3),
                     "pairs_per_s": round(128 / seconds, 1)})
        print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "mini_clip_shapes.json"
    out.write_text(json.dumps({"threads": a.threads, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print("| width | image / text blocks | vocabulary | parameters | fp16 file | step (s) | pairs/s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['width']} | {r['image_blocks']} / {r['text_blocks']} | {r['vocab']:,} "
              f"| {r['parameters'] / 1e6:.2f}M | {r['fp16_mb']} MB | {r['step_s']:.3f} | {r['pairs_per_s']:.0f} |")


if __name__ == "__main__":
    main()
