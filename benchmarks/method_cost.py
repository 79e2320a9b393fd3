"""Cost of every registered method, as in CLIPFit's Table 7: trainable parameters, training and inference
time per image, peak training memory.

For each method of `clipfit.methods.METHODS` (registration order, zero-shot included), in its own fresh
Python subprocess (so that memory peaks do not mix), measured the way `clipfit.engine.train` runs it:

  setup       `load_backbone(model, "none")` (random init, fp32), the method built by
              `build_method(name, backbone, classnames, template, options)` with its base-to-new defaults
              as `clipfit.runner` merges them (`cls.protocol_defaults("base2new", "imagefolder")`, then the
              variant's `cls.preset`, then --options),
              `method.prepare_training()`, `method.train()`
  encoding    for a method that reads stored frozen features (its `Regime` fits or optimises on "features":
              linear-probe, tip-adapter, tip-adapter-f, clip-adapter
              with its default augmentation "cached-views"): `method.encode_images(images)` under
              `torch.no_grad()`, the frozen tower's forward that `clipfit.features.encode_views` runs once
              per training image and view; the median of --steps batches after 1 warm-up, per image and
              view. A run encodes the regime's `views` views of each image (10 by default; linear-probe's 0 means
              the un-augmented image once). The stored features [views, N, dim] handed on are these
              encodings (the same random batch in every view: the timings do not depend on the values)
  fit         a training-free method (a `Regime` that fits and does not optimise: linear-probe,
              tip-adapter), in eval mode under no_grad as the engine runs it: `method.fit(features, labels,
              val)`, val = the batch's own un-augmented features and labels (M = the batch: linear-probe's
              C search and Tip-Adapter's alpha/beta search run on them; encoding real validation images,
              M more forwards, is not counted), the median of --steps fits after 1 warm-up. Its training
              time per image = views x the encoding per image and view + the fit / batch
  trainable   `sum(p.numel() for p in method.trainable_parameters().values())` after any fit (0 for
              zero-shot, linear-probe and tip-adapter, whose fitted head / cache the table names apart).
              Tip-Adapter-F's keys exist only after `fit`: it is fitted on the benchmark batch first, so its
              count is N*K x dim with N*K = the batch (the table says which)
  training    one step = the loss, `method.backward(loss, identity)`, an optimiser step at lr 1e-9 (the
              weights stay nearly as they were), gradients set to None; the median of --steps steps after
              1 warm-up, divided by the batch size. The optimiser is the method's own (SGD with momentum, or
              AdamW for clip-lora and tip-adapter-f): `build_optimizer(complete(OptimConfig(lr=1e-9),
              cls.optim_defaults("base2new", "imagefolder")), params)`. The loss is
              `method.feature_loss(features, labels)` on one stored view of the batch for a method that
              trains on stored features (the training column then excludes the one-off encoding, given in
              its own column), else `method.training_loss(images, labels)`. For a stored-feature method the
              "fresh-augmentation step" column also times `training_loss` on the images, which is what its
              step costs with `augmentation=fresh` (the tower runs on a new augmentation at every step).
              Zero-shot trains nothing: no training time
  inference   `method.eval()`; under `torch.no_grad()` `classifier = method.classifier()` once (its time is
              recorded apart), then `method.logits(images, classifier)` per batch: median of --steps
              batches after 1 warm-up, divided by the batch size. CoCoOp's `classifier()` is None and its
              logits run the text tower for every image over all classes: that is its real cost
  memory      CPU: the process's peak resident set (GB) over setup and training (encoding, fit and the
              training steps; the training's own peak read from VmHWM, reset after setup through
              /proc/self/clear_refs; ru_maxrss where that is unavailable), with the resident set after
              setup, so the training's own share shows; CUDA: `torch.cuda.max_memory_allocated()` over the
              training (peak stats reset after setup) and `memory_allocated()` after setup. The
              fresh-augmentation steps of a stored-feature method are measured after another reset, their
              peak kept apart in the JSON (`fresh_train_peak_gb`)

So a run's training costs about, per training image: views x encoding + epochs x training (stored
features), epochs x fresh-augmentation step (`augmentation=fresh`), or the training column once
(training-free, at this batch: the fits' cost is not linear in the number of images).

Every method gets the same backbone, batch, images (random, the model's input size), labels and classes
(--classes synthetic names of 1-4 words from step_time.py's generator, template "a photo of a {}."), so
the rows compare. Methods' official batches differ (CoCoOp's is 1, MaPLe's 4, KgCoOp's base-to-new 128,
Tip-Adapter-F's 256): the table uses the common batch, as CLIPFit's Table 7 does. MaPLe prompts the first
9 blocks of each tower, so it needs at least 9 (ViT-B-16 has 12); --quick's tiny-clip has 2 and gets
`{"depth": 2}` (TINY_OPTIONS).

The parent records, per child, the 1-minute load average before and after it and warns when it exceeded
the CPU count (other processes then share the CPUs and inflate the wall times), and the machine
(`platform.processor()`, the CPU model, `os.cpu_count()`), torch's version and the children's
`torch.get_num_threads()`. --readme PATH writes the markdown table, a line naming the exact command, the
date, the device, torch's version and the thread count, and the notes, between PATH's
`<!-- method-cost:start -->` and `<!-- method-cost:end -->` markers (`clipfit.readme.update_readme`;
an error when the markers are missing).

    python benchmarks/method_cost.py                          # ViT-B-16, batch 32, 100 classes, 3 steps, CPU
    python benchmarks/method_cost.py --threads 1 --methods clipfit coop cocoop
    python benchmarks/method_cost.py --steps 1 --readme README.md
    python benchmarks/method_cost.py --device cuda --out benchmarks/results/method_cost_cuda.json
    python benchmarks/method_cost.py --quick --threads 1      # tiny-clip, 20 classes, batch 8, 1 step: does it run

Writes the JSON (after every method, so a partial run keeps what it measured; default
benchmarks/results/method_cost.json, with --quick /tmp/method_cost_quick.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
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
README_MARKERS = "method-cost"  # <!-- method-cost:start --> ... <!-- method-cost:end -->
LR = 1e-9  # a step that leaves the weights nearly unchanged

# What the training column measures, per kind of method (the JSON's "training"; the table's "training is").
TRAINING_KINDS = {
    "none": "-",
    "steps on images": "step on images",
    "steps on stored features": "step on stored features",
    "encode + fit": "encode views + fit",
    "fit, then steps on stored features": "fit, then step on stored features",
    "fit, then steps on images": "fit, then step on images",
}


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
    from clipfit.config import OptimConfig, complete
    from clipfit.engine import build_optimizer
    from clipfit.methods import build_method

    for d in job.config_dirs:
        open_clip.add_model_config(d)
    if job.threads:
        torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn) -> list[float]:
        """Wall times of --steps calls of ``fn`` after one warm-up call."""
        fn()
        times = []
        for _ in range(job.steps):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return times

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
    out["image_size"] = size
    out["trains"] = method.regime.trains

    # Memory after setup; then the peak is reset so that the training's own peak can be read apart.
    sync()
    if cuda:
        out["memory_after_setup_gb"] = torch.cuda.memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    else:
        out["memory_after_setup_gb"] = memory.rss_gb()
        out["peak_rss_setup_gb"] = memory.max_rss_gb()  # before the reset: setup's own peak (model building)
        out["peak_reset"] = memory.reset_peak_rss()

    def training_peak() -> tuple[float, float]:
        """(the peak over setup and the phase since the last reset, the phase's own peak) in GB."""
        if cuda:
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            return peak, peak
        if out["peak_reset"]:
            own = memory.peak_rss_gb()  # from the reset on
            return max(out["peak_rss_setup_gb"], own), own
        peak = memory.max_rss_gb()  # whole-process peak: a setup peak above the training's hides it
        return peak, peak

    regime = method.regime
    fits, views = regime.fit, regime.views
    stored = regime.optimise == "features" or (fits and regime.optimise is None)
    optimises = regime.optimise is not None
    if not regime.trains:
        kind = "none"
    elif fits and not optimises:
        kind = "encode + fit"
    elif fits:
        kind = "fit, then steps on stored features" if stored else "fit, then steps on images"
    else:
        kind = "steps on stored features" if stored else "steps on images"
    out["training"] = kind

    # The one-off encoding of the stored features (`clipfit.features.encode_views`: no_grad, once per image
    # and view), for every method that fits or trains on them.
    features = None
    if regime.trains and views is not None and (fits or stored):
        encoded = []

        def encode():
            with torch.no_grad():
                encoded.append(method.encode_images(images).float())

        times = timed(encode)
        out["views"] = views
        out["encoded_views"] = max(views, 1)  # views 0: the un-augmented images once
        out["encode_batch_s"] = times
        out["encode_ms_per_image_per_view"] = 1000 * statistics.median(times) / job.batch
        out["encode_ms_per_image"] = out["encode_ms_per_image_per_view"] * out["encoded_views"]
        features = torch.stack([encoded[v % len(encoded)] for v in range(out["encoded_views"])])  # [views, N, dim]
        del encoded

    if fits:
        # As the engine fits: eval mode, no gradients; val = the batch's own un-augmented features.
        method.eval()
        records = []

        def fit():
            with torch.no_grad():
                records.append(method.fit(features, labels, (features[0], labels)))

        times = timed(fit)
        out["fit_s"] = times
        out["fit_record"] = {k: v for k, v in records[-1].items() if isinstance(v, (int, float, str, bool))}
        out["cache_size"] = job.batch  # N*K: the images the cache (or the probe) was fitted on
        if not optimises:
            out["train_ms_per_image"] = out["encode_ms_per_image"] + 1000 * statistics.median(times) / job.batch

    # Counted after the fit: Tip-Adapter-F's keys exist only then (N*K x dim, N*K = the batch).
    params = list(method.trainable_parameters().values())
    out["trainable"] = sum(p.numel() for p in params)
    out["parameter_groups"] = method.parameter_groups()
    out["fitted"] = sum(out["parameter_groups"].values()) if fits and not params else 0

    if optimises and params:
        optim = complete(OptimConfig(lr=LR), type(method).optim_defaults(PROTOCOL, DATASET))
        out["optimizer"] = optim.optimizer
        optimizer = build_optimizer(optim, params)
        method.train()

        def stepper(loss_of, inputs, losses):
            view = [0]

            def step():
                x = inputs[view[0] % len(inputs)] if isinstance(inputs, list) else inputs
                view[0] += 1
                loss = loss_of(x, labels)
                method.backward(loss, lambda t: t)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.total.item())  # .item() waits for the GPU too

            return step

        losses: list[float] = []
        if stored:  # one stored view of the batch per step, as `clipfit.features.feature_batches` draws them
            times = timed(stepper(method.feature_loss, list(features), losses))
        else:
            times = timed(stepper(method.training_loss, images, losses))
        out["train_step_s"] = times
        out["train_ms_per_image"] = 1000 * statistics.median(times) / job.batch
        out["loss"] = losses[0]

    if "train_ms_per_image" in out:
        out["train_peak_gb"], own = training_peak()
        if not cuda and out["peak_reset"]:
            out["training_own_peak_rss_gb"] = own
        # What the training adds to the memory held after setup (activations, gradients, optimizer state).
        out["train_rise_gb"] = own - out["memory_after_setup_gb"]

    if optimises and params and stored:
        # The same method's step on images: what it costs with augmentation=fresh (the tower runs every step).
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            out["fresh_peak_reset"] = True
        else:
            out["fresh_peak_reset"] = memory.reset_peak_rss()
        losses = []
        times = timed(stepper(method.training_loss, images, losses))
        out["fresh_step_s"] = times
        out["fresh_step_ms_per_image"] = 1000 * statistics.median(times) / job.batch
        out["fresh_loss"] = losses[0]
        if out["fresh_peak_reset"]:
            out["fresh_train_peak_gb"] = training_peak()[0]

    # Inference as `clipfit.engine.predict_logits` runs it: eval mode, no graph, the classifier once.
    method.eval()
    with torch.no_grad():
        sync()
        start = time.perf_counter()
        classifier = method.classifier()
        sync()
        out["classifier_s"] = time.perf_counter() - start
        out["classifier_is_none"] = classifier is None
        times = timed(lambda: method.logits(images, classifier))
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
        proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
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


def _trainable(r: dict) -> str:
    text = f"{r['trainable']:,}"
    if r.get("cache_size") is not None:
        if r["trainable"]:
            return f"{text} (N*K = {r['cache_size']} keys)"
        if r.get("fitted"):
            return f"0 (fitted {r['fitted']:,})"
        return f"0 (cache of N*K = {r['cache_size']})"
    return text


def _encoding(r: dict) -> str:
    if "encode_ms_per_image_per_view" not in r:
        return "-"
    views = f"x {r['views']}" if r["views"] else "x 1, un-augmented"
    return f"{_fmt(r['encode_ms_per_image_per_view'], '.3g')} ({views})"


def table(results: list[dict], device: str) -> str:
    memory_label = "peak allocated GB" if device.startswith("cuda") else "peak RSS GB"
    head = (f"| method | trainable params | training ms/image | inference ms/image | {memory_label} (training) | "
            "training is | encoding ms/image/view (views) | fresh-augmentation step ms/image |")
    lines = [head, "|---|" + "---:|" * 4 + "---|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | error: {r['error']} | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {r['method']} | {_trainable(r)} | {_fmt(r.get('train_ms_per_image'), '.3g')} | "
            f"{_fmt(r.get('infer_ms_per_image'), '.3g')} | {_fmt(r.get('train_peak_gb'))} | "
            f"{TRAINING_KINDS.get(r.get('training'), r.get('training', '-'))} | {_encoding(r)} | "
            f"{_fmt(r.get('fresh_step_ms_per_image'), '.3g')} |"
        )
    return "\n".join(lines)


def _optimises(cls) -> bool:
    """Whether a method class runs optimisation steps (not zero-shot, not a training-free fit alone)."""
    from clipfit.methods import method_regime

    return method_regime(cls.name).optimise is not None


def notes(results: list[dict], args, methods_cls: dict) -> list[str]:
    from clipfit.config import OptimConfig, complete

    def official(m: str) -> str:
        optim = complete(OptimConfig(), methods_cls[m].optim_defaults(PROTOCOL, DATASET))
        return f"{m} {optim.batch_size} ({optim.optimizer})"

    out = [
        "training ms/image: the optimiser step (the method's own optimiser at lr 1e-9) per image, on the images "
        "(`training_loss`) or, for a method that trains on stored features, on one stored view (`feature_loss`: the "
        "one-off encoding excluded); for a training-free method (encode views + fit) views x the encoding + its fit, "
        f"per image, with the batch's own features as its validation set (M = {args.batch})",
        "encoding ms/image/view: the frozen image tower's no-grad forward (`encode_images`) that a stored-feature run "
        "pays once per training image and view (views in brackets); fresh-augmentation step: the same method's step "
        "on images, what each step costs with augmentation=fresh. A run costs about views x encoding + epochs x "
        "training per image (stored features), or epochs x fresh step (augmentation=fresh)",
        f"tip-adapter-f is fitted on the benchmark batch first: its trainable cache keys are N*K x dim with N*K = "
        f"{args.batch} (a real run's N*K is classes x shots); linear-probe's and tip-adapter's fitted head / cache "
        "are not trainable parameters",
        f"every method at batch {args.batch} so the rows compare (as CLIPFit's Table 7); official batches "
        "(base-to-new) and optimisers: "
        + ", ".join(official(r["method"]) for r in results if _optimises(methods_cls[r["method"]])),
        "CoCoOp's official batch is 1; its classifier() is None and its logits run the text tower per image over "
        "all classes",
    ]
    return out


def run_line(argv: list[str], env: dict, results: list[dict]) -> str:
    threads = next((r["threads"] for r in results if "threads" in r), "?")
    if env.get("gpu"):
        where = f"GPU {env['gpu']}"
    else:
        where = f"CPU {env.get('cpu') or env.get('processor') or '?'} ({env.get('cpus')} CPUs)"
    # OMP_NUM_THREADS, where set, belongs to the command: it sets the children's default thread count.
    omp = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ else []
    command = " ".join(omp + [shlex.join(["python", "benchmarks/method_cost.py", *argv])])
    return (f"`{command}` on {datetime.date.today().isoformat()}, {where}, torch {env['torch']}, "
            f"{threads} torch thread{'s' if threads != 1 else ''}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # the measuring subprocess: --child JOB_JSON RESULT_PATH
        fields = json.loads(argv[1])
        fields["config_dirs"] = tuple(fields["config_dirs"])
        return _child(Job(**fields), argv[2])

    from clipfit.methods import METHODS  # registration order

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="default: every registered method")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed training steps (and inference batches) after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each subprocess (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", type=json.loads, default=None,
                        help="JSON {method: {option: value}} over the base-to-new defaults "
                             f"(--quick: {json.dumps(TINY_OPTIONS)})")
    parser.add_argument("--model-config-dir", nargs="*", default=[], help="extra open_clip model config folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: benchmarks/results/method_cost.json; "
                             "with --quick /tmp/method_cost_quick.json)")
    parser.add_argument("--readme", type=Path, default=None,
                        help=f"write the table between this file's <!-- {README_MARKERS}:start --> and "
                             f"<!-- {README_MARKERS}:end --> markers")
    parser.add_argument("--quick", action="store_true",
                        help="tiny-clip (tests/model_configs), 20 classes, batch 8, 1 step: check the script works")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    methods = [m for m in METHODS if m in args.methods]  # registry order, whatever order they were named in
    if args.readme is not None:
        from clipfit.readme import update_readme

        if not args.readme.is_file():  # fail now, not after the run, on a missing file or markers
            parser.error(f"--readme {args.readme}: no such file")
        text = args.readme.read_text(encoding="utf-8")
        if f"<!-- {README_MARKERS}:start -->" not in text or f"<!-- {README_MARKERS}:end -->" not in text:
            parser.error(f"{args.readme}: no <!-- {README_MARKERS}:start --> ... <!-- {README_MARKERS}:end --> markers")
    config_dirs = [str(Path(d).resolve()) for d in args.model_config_dir]
    extra = args.options or {}
    if args.quick:
        args.model, args.classes, args.batch, args.steps = "tiny-clip", 20, 8, 1
        config_dirs.append(str(TEST_CONFIGS))
        extra = {**TINY_OPTIONS, **extra}
    if args.quick:
        default_out = Path(tempfile.gettempdir()) / "method_cost_quick.json"
    else:
        default_out = ROOT / "benchmarks" / "results" / "method_cost.json"
    out = args.out or default_out
    out.parent.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    env = environment(args.device)
    env.update(processor=platform.processor(), machine=platform.machine())
    record = {"config": {**vars(args), "out": str(out), "readme": str(args.readme) if args.readme else None,
                         "model_config_dir": config_dirs, "options": extra, "argv": argv},
              "protocol_defaults": f"{PROTOCOL}/{DATASET}", "environment": env, "results": results}
    started = time.perf_counter()

    def save():
        record["notes"] = notes(results, args, METHODS)
        record["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(record, indent=2, default=str))

    for name in methods:
        # As `clipfit.runner` builds a run's options: the protocol's defaults, the variant's preset, the user's.
        options = {**METHODS[name].protocol_defaults(PROTOCOL, DATASET), **METHODS[name].preset, **extra.get(name, {})}
        job = Job(model=args.model, method=name, options=options, classes=args.classes, batch=args.batch,
                  steps=args.steps, seed=args.seed, threads=args.threads, device=args.device,
                  config_dirs=tuple(config_dirs))
        print(f"[{args.model} {name}] options {options} ...", flush=True)
        r = {"method": name, **run_isolated(job)}
        results.append(r)
        if "error" in r:
            print(f"    error: {r['error']}", flush=True)
        else:
            parts = [f"{_trainable(r)} trainable"]
            if "encode_ms_per_image_per_view" in r:
                parts.append(f"encoding {_encoding(r)} ms/image/view")
            if "train_ms_per_image" in r:
                parts.append(f"training ({r['training']}) {r['train_ms_per_image']:.3g} ms/image, "
                             f"peak {r['train_peak_gb']:.2f} GB")
            if "fresh_step_ms_per_image" in r:
                parts.append(f"fresh-augmentation step {r['fresh_step_ms_per_image']:.3g} ms/image")
            parts.append(f"inference {r['infer_ms_per_image']:.3g} ms/image")
            print(f"    {', '.join(parts)} ({r['subprocess_s']:.0f} s)", flush=True)
        save()

    lines = [table(results, args.device), "", run_line(argv, env, results) + "; "
             f"{args.model} (random init), {args.classes} classes, batch {args.batch}, fp32, median of {args.steps} "
             f"step(s) after 1 warm-up, base-to-new defaults, each method in its own process", ""]
    lines += [f"- {n}" for n in notes(results, args, METHODS)]
    busy = [r for r in results if max(r["loadavg_before"], r["loadavg_after"]) > (os.cpu_count() or 1)]
    if busy:
        load = max(max(r["loadavg_before"], r["loadavg_after"]) for r in busy)
        warning = (f"warning: {len(busy)} of {len(results)} method(s) ran while the 1-minute load average exceeded "
                   f"the CPU count (up to {load:.1f} on {os.cpu_count()} CPUs, the child's own threads included): "
                   "other processes shared the CPUs, so the wall times are inflated; rerun on a quiet machine")
        lines += [f"- {warning}"]
        record["warning"] = warning
    markdown = "\n".join(lines)
    print("\n" + markdown)
    save()
    if args.readme is not None:
        update_readme(args.readme, markdown, README_MARKERS)
        print(f"\nwrote the table into {args.readme}")
    print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
