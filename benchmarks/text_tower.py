"""The text tower alone over class prompts: forward + backward to CLIPFit's text biases, per encoder.

A quick, small check of where the text time goes (the full step benchmark is `benchmarks.step_time`):

  full       open_clip `encode_text` over all 77 positions (the reference implementation, one pass)
  truncated  positions up to the batch's last end-of-text token only
  ours       `clipfit.text_encoding.encode_prompts`: shared prefix once, packed suffixes, grouped attention
  padded     the same with one padded attention call per block (the CUDA default)

    python -m benchmarks.text_tower --model ViT-B-32 --classes 100 1000 --threads 1

Reports the median over --repeats of wall time and of process CPU time (steadier on a shared machine);
the encoders alternate within each repeat, so load changes hit them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from clipfit import text_encoding
from clipfit.backbone import load_backbone, text_mlp_output_projections

try:
    from .step_time import TEMPLATE, class_names
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from step_time import TEMPLATE, class_names

ENCODERS = ("full", "truncated", "ours", "padded")


def encoders(model, tokens):
    tower = text_encoding.text_tower_or_none(model)
    return {
        "full": lambda: F.normalize(model.encode_text(tokens), dim=-1),
        "truncated": lambda: text_encoding.encode_prompts(model, tokens, share_prefix=False),
        "ours": lambda: F.normalize(text_encoding.encode_shared_prefix(tower, tokens, padded_attention=False), dim=-1),
        "padded": lambda: F.normalize(text_encoding.encode_shared_prefix(tower, tokens, padded_attention=True), dim=-1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS)
    parser.add_argument("--full-max-classes", type=int, default=100,
                        help="skip the full-length encoder above this (memory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--template", default=TEMPLATE)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, "none", device=args.device)
    model = backbone.model.requires_grad_(False)
    for linear in text_mlp_output_projections(model):
        linear.bias.requires_grad_(True)
    print(f"{args.model}, {torch.get_num_threads()} threads, {args.device}; forward + backward to the text biases")
    print(f"{'classes':>7} {'encoder':>10} {'positions':>9} {'wall s':>8} {'cpu s':>8} {'x full':>7} {'x trunc':>7}")
    for classes in args.classes:
        tokens = backbone.tokenize([args.template.format(n) for n in class_names(classes)])
        layout = text_encoding.prompt_layout(tokens)
        positions = {"full": tokens.numel(), "truncated": classes * layout.length, "ours": layout.rows + layout.prefix,
                     "padded": classes * layout.groups[0][0] + layout.prefix}
        chosen = [e for e in args.encoders if e != "full" or classes <= args.full_max_classes]
        run = encoders(model, tokens)
        weights = torch.randn(classes, model.text_projection.shape[-1], device=args.device)
        wall: dict[str, list[float]] = {e: [] for e in chosen}
        cpu: dict[str, list[float]] = {e: [] for e in chosen}
        for e in chosen:  # warm-up
            (run[e]() * weights).sum().backward()
        for _ in range(args.repeats):
            for e in chosen:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                w0, c0 = time.perf_counter(), time.process_time()
                (run[e]() * weights).sum().backward()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                wall[e].append(time.perf_counter() - w0)
                cpu[e].append(time.process_time() - c0)
        med = {e: (statistics.median(wall[e]), statistics.median(cpu[e])) for e in chosen}
        for e in chosen:
            over_full = f"{med['full'][1] / med[e][1]:.2f}" if "full" in med else "-"
            over_trunc = f"{med['truncated'][1] / med[e][1]:.2f}" if "truncated" in med else "-"
            print(f"{classes:>7} {e:>10} {positions[e]:>9} {med[e][0]:>8.2f} {med[e][1]:>8.2f} "
                  f"{over_full:>7} {over_trunc:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
