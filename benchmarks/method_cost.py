"""Cost of every registered method, as in CLIPFit's Table 7: trainable parameters, training and inference
time per image, peak training memory.

For each method of `clipfit.methods.METHODS` (registration order, zero-shot included), in its own fresh
Python subprocess (so that memory peaks do not mix):

  setup       `load_backbone(model, "none")` (random init, fp32), the method built by
              `build_method(name, backbone, classnames, template, options)` with its base-to-new defaults
              (`options = cls.protocol_defaults("base2new", "imagefolder")`, plus --options),
              `method.prepare_training()`, `method.train()`
  trainable   `sum(p.numel() for p in method.trainable_parameters().values())` (0 for zero-shot)
  training    one step = `loss, _ = method.training_loss(images, labels)`, `method.backward(loss, identity)`,
              an SGD step at lr 1e-9 (the weights stay nearly as they were), gradients set to None;
              the median of --steps steps after 1 warm-up, divided by the batch size. Zero-shot trains
              nothing: no training time. A training-free method (`method.fits`) is timed through one
              `method.fit` over --steps batches (after a 1-batch warm-up), per image
  inference   `method.eval()`; under `torch.no_grad()` `classifier = method.classifier()` once (its time is
              recorded apart), then `method.logits(images, classifier)` per batch: median of --steps
              batches after 1 warm-up, divided by the batch size. CoCoOp's `classifier()` is None and its
              logits run the text tower for every image over all classes: that is its real cost
  memory      CPU: the process's peak resident set (GB) over setup and the training steps (the steps'
              own peak read from VmHWM, reset after setup through /proc/self/clear_refs; ru_maxrss where
              that is unavailable), with the resident set after setup, so the step's own share shows;
              CUDA: `torch.cuda.max_memory_allocated()` over the steps (peak stats reset after setup) and
              `memory_allocated()` after setup

Every method gets the same backbone, batch, images (random, the model's input size), labels and classes
(--classes synthetic names of 1-4 words from prompt_step.py's generator, template "a photo of a {}."), so
the rows compare. Methods' official batches differ (CoCoOp's is 1, MaPLe's 4, KgCoOp's base-to-new 128):
the table uses the common batch, as CLIPFit's Table 7 does. MaPLe prompts the first 9 blocks of each tower,
so it needs at least 9 (ViT-B-16 has 12); --quick's tiny-clip has 2 and gets `{"depth": 2}` (TINY_OPTIONS).

The parent records, per child, the 1-minute load average before and after it and warns when it exceeded
the CPU count (other processes then share the CPUs and inflate the wall times), and the machine
(`platform.processor()`, the CPU model, `os.cpu_count()`), torch's version and the children's
`torch.get_num_threads()`.

    python benchmarks/method_cost.py                          # ViT-B-16, batch 32, 100 classes, 3 steps, CPU
    python benchmarks/method_cost.py --threads 1 --methods clipfit coop cocoop
    python benchmarks/method_cost.py --device cuda --out benchmarks/results/method_cost_cuda.json
    python benchmarks/method_cost.py --quick --threads 1      # tiny-clip, 20 classes, batch 8, 1 step: does it run

Writes the JSON (after every method, so a partial run keeps what it measured; default
benchmarks/results/method_cost.json, with --quick /tmp/method_cost_quick.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    from . import memory
    from .prompt_step import TEMPLATE, _fmt, class_names, environment
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import memory
    from prompt_step import TEMPLATE, _fmt, class_names, environment

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIGS = ROOT / "tests" / "model_configs"
PROTOCOL, DATASET = "base2new", "imagefolder"  # whose defaults each method is built with
# Options --quick adds over the protocol defaults: tiny-clip has 2 blocks per tower, MaPLe's default depth is 9.
TINY_OPTIONS = {"maple": {"depth": 2}}


@dataclass
class Job:
    model: str
    method: str
    options: dict
    classes: int
    batch: int
    steps: int
    seed: int
    threads: int | None
    device: str
    config_dirs: tuple[str, ...] = ()
    template: str = TEMPLATE


# ---------------------------------------------------------------- in the subprocess


def _measure(job: Job) -> dict:
    import open_clip
    import torch

    from clipfit.backbone import load_backbone
    from clipfit.methods import build_method

    for d in job.config_dirs:
        open_clip.add_model_config(d)
    if job.threads:
        torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    out: dict = {"threads": torch.get_num_threads(), "options": job.options}
    torch.manual_seed(job.seed)
    backbone = load_backbone(job.model, "none", device=device)
    method = build_method(job.method, backbone, class_names(job.classes, job.seed), job.template, dict(job.options))
    method.prepare_training()
    method.train()
    size = backbone.preprocess.image_size
    generator = torch.Generator().manual_seed(job.seed)
    images = torch.randn(job.batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, job.classes, (job.batch,), generator=generator).to(device)

    params = list(method.trainable_parameters().values())
    out["trainable"] = sum(p.numel() for p in params)
    out["parameter_groups"] = method.parameter_groups()
    out["trains"] = bool(method.trains)
    out["image_size"] = size

    # Memory after setup; then the peak is reset so that the steps' own peak can be read apart.
    sync()
    if cuda:
        out["memory_after_setup_gb"] = torch.cuda.memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    else:
        out["memory_after_setup_gb"] = memory.rss_gb()
        out["peak_rss_setup_gb"] = memory.max_rss_gb()  # before the reset: setup's own peak (model building)
        out["peak_reset"] = memory.reset_peak_rss()

    # A training-free method (`method.fits`, none registered yet) sees the training set once through
    # `fit` instead of optimisation steps: its time is that of `fit` over --steps batches, per image.
    fits = bool(getattr(method, "fits", False))
    out["training"] = "none" if not method.trains else "fit" if fits else "steps"
    if method.trains and fits:
        method.eval()  # as `clipfit.engine` runs a fit: eval mode, no gradients
        with torch.no_grad():
            method.fit(iter([(images, labels)]))  # warm-up
            sync()
            start = time.perf_counter()
            method.fit(iter([(images, labels)] * job.steps))
            sync()
        out["fit_s"] = time.perf_counter() - start
        out["train_ms_per_image"] = 1000 * out["fit_s"] / (job.steps * job.batch)
    elif method.trains and params:
        optimizer = torch.optim.SGD(params, lr=1e-9)  # a step that leaves the weights nearly unchanged
        losses = []

        def step():
            loss, _ = method.training_loss(images, labels)
            method.backward(loss, lambda x: x)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())  # .item() waits for the GPU too

        step()  # warm-up
        times = []
        for _ in range(job.steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        out["train_step_s"] = times
        out["train_ms_per_image"] = 1000 * statistics.median(times) / job.batch
        out["loss"] = losses[0]

    if "train_ms_per_image" in out:
        if cuda:
            out["train_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        elif out["peak_reset"]:
            out["steps_peak_rss_gb"] = memory.peak_rss_gb()  # the steps' own peak (from the reset on)
            out["train_peak_gb"] = max(out["peak_rss_setup_gb"], out["steps_peak_rss_gb"])
        else:
            out["train_peak_gb"] = memory.max_rss_gb()  # whole-process peak: a setup peak above the steps' hides theirs
        # What the training steps add to the memory held after setup (activations, gradients, optimizer).
        steps_peak = out.get("steps_peak_rss_gb", out["train_peak_gb"])
        out["train_rise_gb"] = steps_peak - out["memory_after_setup_gb"]

    # Inference as `clipfit.engine.predict_logits` runs it: eval mode, no graph, the classifier once.
    method.eval()
    with torch.no_grad():
        sync()
        start = time.perf_counter()
        classifier = method.classifier()
        sync()
        out["classifier_s"] = time.perf_counter() - start
        out["classifier_is_none"] = classifier is None
        method.logits(images, classifier)  # warm-up
        times = []
        for _ in range(job.steps):
            sync()
            start = time.perf_counter()
            method.logits(images, classifier)
            sync()
            times.append(time.perf_counter() - start)
    out["infer_batch_s"] = times
    out["infer_ms_per_image"] = 1000 * statistics.median(times) / job.batch
    return out


def _child(job: Job, result_path: str) -> int:
    """Entry of the measuring subprocess (`--child`): measure, write the JSON result (or the error)."""
    try:
        result = _measure(job)
    except BaseException as err:  # reported in the results; the run goes on
        result = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500],
                  "trace": traceback.format_exc(limit=6)[-3000:]}
    Path(result_path).write_text(json.dumps(result))
    return 0


def run_isolated(job: Job) -> dict:
    """One method in a fresh Python process; a process that dies without a result is reported with the end
    of its stderr."""
    with tempfile.TemporaryDirectory(prefix="method_cost_") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(job)), str(result_path)]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        elapsed = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    tail = (proc.stderr or "").strip()[-1500:]
    if result is None:
        last = tail.splitlines()[-1] if tail else ""
        result = {"error": f"subprocess died with exit code {proc.returncode}" + (f": {last}" if last else "")}
    if tail:
        result["stderr_tail"] = tail
    result.update(subprocess_s=elapsed, loadavg_before=load_before, loadavg_after=load_after)
    return result


# ---------------------------------------------------------------- in the parent


def table(results: list[dict], device: str) -> str:
    memory = "peak allocated GB" if device.startswith("cuda") else "peak RSS GB"
    setup = "allocated after setup GB" if device.startswith("cuda") else "RSS after setup GB"
    head = f"| method | trainable params | train ms/image | inference ms/image | {memory} (training) | {setup} | training rise GB |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | - | - | - | - | - |")
            continue
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {_fmt(r.get('train_ms_per_image'), '.3g')} | "
            f"{_fmt(r.get('infer_ms_per_image'), '.3g')} | {_fmt(r.get('train_peak_gb'))} | {_fmt(r.get('memory_after_setup_gb'))} | "
            f"{_fmt(r.get('train_rise_gb'), '.3f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # the measuring subprocess: --child JOB_JSON RESULT_PATH
        fields = json.loads(argv[1])
        fields["config_dirs"] = tuple(fields["config_dirs"])
        return _child(Job(**fields), argv[2])

    from clipfit.methods import METHODS  # registration order

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="default: every registered method")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (and inference batches) after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each subprocess (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", type=json.loads, default=None,
                        help='JSON {method: {option: value}} over the base-to-new defaults (--quick: %s)' % json.dumps(TINY_OPTIONS))
    parser.add_argument("--model-config-dir", nargs="*", default=[], help="extra open_clip model config folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: benchmarks/results/method_cost.json; with --quick /tmp/method_cost_quick.json)")
    parser.add_argument("--quick", action="store_true", help="tiny-clip (tests/model_configs), 20 classes, batch 8, 1 step: check the script works")
    args = parser.parse_args(argv)
    config_dirs = [str(Path(d).resolve()) for d in args.model_config_dir]
    extra = args.options or {}
    if args.quick:
        args.model, args.classes, args.batch, args.steps = "tiny-clip", 20, 8, 1
        config_dirs.append(str(TEST_CONFIGS))
        extra = {**TINY_OPTIONS, **extra}
    out = args.out or (Path(tempfile.gettempdir()) / "method_cost_quick.json" if args.quick else ROOT / "benchmarks" / "results" / "method_cost.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    env = environment(args.device)
    env.update(processor=platform.processor(), machine=platform.machine())
    notes = [
        f"every method at batch {args.batch} so the rows compare (as CLIPFit's Table 7); official batches (base-to-new): "
        + ", ".join(f"{m} {METHODS[m].optim_defaults(PROTOCOL, DATASET).get('batch_size', '?')}" for m in args.methods if METHODS[m].trains),
        "CoCoOp's official batch is 1; its classifier() is None and its logits run the text tower per image over all classes",
    ]
    record = {"config": {**vars(args), "out": str(out), "model_config_dir": config_dirs, "options": extra},
              "protocol_defaults": f"{PROTOCOL}/{DATASET}", "environment": env, "notes": notes, "results": results}
    started = time.perf_counter()

    def save():
        record["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(record, indent=2))

    for name in args.methods:
        options = {**METHODS[name].protocol_defaults(PROTOCOL, DATASET), **extra.get(name, {})}
        job = Job(model=args.model, method=name, options=options, classes=args.classes, batch=args.batch, steps=args.steps,
                  seed=args.seed, threads=args.threads, device=args.device, config_dirs=tuple(config_dirs))
        print(f"[{args.model} {name}] options {options} ...", flush=True)
        r = {"method": name, **run_isolated(job)}
        results.append(r)
        if "error" in r:
            print(f"    error: {r['error']}", flush=True)
        else:
            train = f"train {r['train_ms_per_image']:.3g} ms/image, peak {r['train_peak_gb']:.2f} GB, " if "train_ms_per_image" in r else ""
            print(f"    {r['trainable']:,} trainable, {train}inference {r['infer_ms_per_image']:.3g} ms/image ({r['subprocess_s']:.0f} s)", flush=True)
        save()

    threads = next((r["threads"] for r in results if "threads" in r), "?")
    where = env.get("gpu", f"CPU ({env.get('cpu') or env['processor']}, {os.cpu_count()} CPUs, {threads} torch threads)")
    print(f"\n{args.model}, {args.classes} classes, batch {args.batch}, fp32, {where}, torch {env['torch']}; "
          f"median of {args.steps} step(s) after 1 warm-up; base-to-new defaults\n")
    print(table(results, args.device))
    print("\n" + "\n".join(f"- {n}" for n in notes))
    busy = [r for r in results if max(r["loadavg_before"], r["loadavg_after"]) > (os.cpu_count() or 1)]
    if busy:
        load = max(max(r["loadavg_before"], r["loadavg_after"]) for r in busy)
        print(f"\nwarning: {len(busy)} of {len(results)} method(s) ran while the 1-minute load average exceeded the CPU count "
              f"(up to {load:.1f} on {os.cpu_count()} CPUs, the child's own threads included): other processes shared the "
              "CPUs, so the wall times are inflated; rerun on a quiet machine")
    save()
    print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
