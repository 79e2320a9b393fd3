"""What the frozen-feature path saves: whole runs of the methods that can train on stored views, once with
``augmentation=cached-views`` (each training image encoded in 10 augmented views once, one drawn per image
and epoch) and once with ``augmentation=fresh`` (the image tower runs on a new augmentation at every step,
as the official code does), on a mini-world task with the built-in mini CLIP: wall time of the run
(training + evaluation, from the run's metrics) and its accuracy, per seed.

    python benchmarks/feature_cache.py                      # mini_textures, 16 shots, seed 1, both methods
    python benchmarks/feature_cache.py --task mini_letters --seeds 1 2 3
    python benchmarks/feature_cache.py --readme README.md    # also write the table between its markers

Each run goes to a fresh temporary folder (nothing is reused). Writes benchmarks/results/feature_cache.json
and prints a markdown table. Run it alone: another heavy job on the same cores inflates both columns.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from clipfit import api
from clipfit.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("clip-adapter", "tip-adapter-f")
MODES = ("fresh", "cached-views")


def measure(method: str, mode: str, task: str, shots: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(method=method, model="mini-clip", pretrained="builtin", dataset=task, protocol="few-shot",
                           shots=shots, seeds=[seed], method_options={"augmentation": mode}, out=out)
        started = time.time()
        summary = api.run(config, progress=False, echo=False)
        wall = time.time() - started
    metrics = summary["per_seed"][0]
    return {"method": method, "mode": mode, "task": task, "shots": shots, "seed": seed,
            "run_seconds": metrics["seconds"], "wall_seconds": round(wall, 1), "accuracy": metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mini_textures")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "feature_cache.json")
    parser.add_argument("--readme", type=Path, help="write the table between this README's feature-cache markers")
    args = parser.parse_args()
    rows = [measure(m, mode, args.task, args.shots, s) for m in args.methods for s in args.seeds for mode in MODES]
    result = {"command": "python benchmarks/feature_cache.py " + " ".join(os.sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    lines = ["| method | seed | fresh: s / run | cached views: s / run | speed-up | fresh accuracy | cached accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in args.methods:
        for s in args.seeds:
            fresh, cached = (
                next(r for r in rows if (r["method"], r["seed"], r["mode"]) == (m, s, mode)) for mode in MODES
            )
            lines.append(f"| {m} | {s} | {fresh['run_seconds']:.1f} | {cached['run_seconds']:.1f} | "
                         f"{fresh['run_seconds'] / cached['run_seconds']:.1f}x | {fresh['accuracy']:.1f} | "
                         f"{cached['accuracy']:.1f} |")
    lines.append(f"\n`{result['command'].strip()}` on {result['date']}, {result['cpus']} CPUs, "
                 f"{result['threads']} torch threads, torch {result['torch']}; {args.task}, {args.shots} shots, "
                 "the mini CLIP; s / run is training + evaluation.")
    markdown = "\n".join(lines)
    print(markdown)
    if args.readme:
        from clipfit.readme import update_readme

        update_readme(args.readme, markdown, "feature-cache")


if __name__ == "__main__":
    main()
