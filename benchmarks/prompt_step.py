"""CoOp and KgCoOp training step on the CPU: ours against the straightforward 77-position text pass.

For each method and number of classes, each path measured in its own fresh Python subprocess (so that its
peak memory is its own, and an out-of-memory failure is recorded, not fatal), under an address-space cap
(`resource.setrlimit(RLIMIT_AS)`, --mem-limit-gb):

  image forward    `torch.no_grad()` forward of the image tower alone on the batch (`method.encode_images`):
                   the reference time every step pays
  ours             one full training step as `clipfit.engine.train` runs it: `method.training_loss` +
                   `method.backward` (gradients zeroed after each). The class features come from
                   `clipfit.text_encoding.encode_prompts(..., context=...)`: the learned prefix
                   [SOS][ctx_1..ctx_M] once per step, then each class's own suffix tokens only. On a CPU
                   attention runs once per group of equally long suffixes (one call per distinct suffix
                   length in each block)
  ours-padded      `ours` with the class features computed by `encode_shared_prefix(tower, prompt_tokens,
                   padded_attention=True, context=method.context())`, normalised: attention runs once per
                   block over the suffixes padded to the longest, the variant CUDA uses by default. Its
                   operator count does not depend on how many distinct suffix lengths the class names have
                   (the `suffix lengths` column), where `ours`'s grows with them
  straightforward  the same step with the method's `class_features` replaced (on the instance) by
                   `F.normalize(encode_with_context(tower, prompt_tokens, context, truncate=False))`: every
                   class x all 77 positions through the text tower, as the official CoOp/KgCoOp code does

Methods: `coop` (few-shot default, 16 random context vectors, `{"n_ctx": 16}`), `kgcoop` (its defaults:
4 vectors from "a photo of a", W 8, hand-crafted features from "a photo of a {}." computed once by
`prepare_training`), and `coop-ctx4` (`{"ctx_init": "a photo of a"}`, 4 vectors; `ours` and `ours-padded`
only, since the straightforward pass and the image forward do not depend on the number of context vectors).

Per configuration: the median wall time (and process CPU time) of --steps steps after one warm-up; the
process's resident set after setup and its peak (`ru_maxrss`) after setup and after the steps; the ratio
of the step time to the image forward's; and the number of aten operators one step dispatches,
`len([e for e in prof.events() if e.name.startswith("aten::")])` under `torch.profiler` (CPU activity),
for the whole step and for the text side alone (`method.class_features()` forward + backward of its sum).
All aten events count, nested ones included (an `aten::linear` and the `aten::addmm` inside it are two);
the JSON also holds the top-level count (aten events whose parent is not an aten event). The summary says
whether the operator counts grow with the number of classes.

Models are random-init (`load_backbone(name, "none")`), fp32, images random at the model's input size,
class names 1-4 words from `benchmarks.step_time`'s fixed word list (deterministic), torch's default
thread count unless --threads. Each measurement records the 1-minute load average before and after its
steps; on a machine that other processes keep busy torch's OpenMP threads wait on each other at every
operator, which slows a step of many small operators far more than one of few large ones (tens of times
seen on 2 shared cores): the script warns when the load exceeded the CPU count.

    python benchmarks/prompt_step.py                      # ViT-B-16, coop coop-ctx4 kgcoop, 100 and 1000 classes
    python benchmarks/prompt_step.py --paths ours ours-padded --classes 100 --threads 1
    python benchmarks/prompt_step.py --methods coop kgcoop --classes 100 1000 --steps 3 --batch 32 \\
        --mem-limit-gb 20 --out benchmarks/results/prompt_step.json
    python benchmarks/prompt_step.py --quick              # tiny-clip, 20 and 50 classes, 1 step: does it run

Writes the JSON (after every measurement, so a partial run keeps what it measured) and prints a markdown
table. At 1,000 classes the straightforward step needs about classes x 77 x 12 blocks of activations
(tens of GB): under the cap it is reported as "did not fit (N GB cap)".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
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
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import memory

try:
    from .step_time import TEMPLATE, _fmt, class_names, environment
except ImportError:  # run as a script: benchmarks/ is on sys.path
    from step_time import TEMPLATE, _fmt, class_names, environment

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIGS = ROOT / "tests" / "model_configs"

# name -> (clipfit method, options, paths measured)
METHODS = {
    "coop": ("coop", {"n_ctx": 16}, ("image forward", "ours", "ours-padded", "straightforward")),
    "coop-ctx4": ("coop", {"ctx_init": "a photo of a"}, ("ours", "ours-padded")),
    "kgcoop": ("kgcoop", {}, ("image forward", "ours", "ours-padded", "straightforward")),
}
PATHS = ("image forward", "ours", "ours-padded", "straightforward")


@dataclass
class Job:
    model: str
    method: str
    classes: int
    path: str
    batch: int
    steps: int
    seed: int
    threads: int | None
    mem_limit_gb: float
    config_dirs: tuple[str, ...] = ()
    profile: bool = True


# ---------------------------------------------------------------- in the subprocess


def _is_memory_error(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or "alloc" in text or "memory" in text


def _setup(job: Job):
    import open_clip
    import torch

    from clipfit.backbone import load_backbone
    from clipfit.methods import build_method
    from clipfit.text_encoding import prompt_layout

    for d in job.config_dirs:
        open_clip.add_model_config(d)
    if job.threads:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    backbone = load_backbone(job.model, "none")
    name, options, _ = METHODS[job.method]
    method = build_method(name, backbone, class_names(job.classes, job.seed), TEMPLATE, dict(options))
    method.prepare_training()
    method.train()
    size = backbone.preprocess.image_size
    generator = torch.Generator().manual_seed(job.seed)
    images = torch.randn(job.batch, 3, size, size, generator=generator)
    labels = torch.randint(0, job.classes, (job.batch,), generator=generator)
    tokens = method.prompt_tokens
    layout = prompt_layout(tokens)
    prompts = {
        "n_ctx": int(method.prompt_learner.ctx.shape[0]),
        "example": method.prompts[0],
        "shared_prefix": layout.prefix,
        "longest": layout.length,
        "positions_straightforward": int(tokens.numel()),
        "positions_ours": layout.rows + layout.prefix,
        # distinct suffix lengths: `ours` makes one attention call per length per block, `ours-padded` one
        "suffix_groups": len(layout.groups),
        "positions_padded": int(layout.padded_rows.numel()) + layout.prefix,
    }
    return method, images, labels, prompts


def _use_straightforward(method) -> None:
    """Replace the instance's `class_features` by the full-length computation (all classes x 77 positions)."""
    import torch.nn.functional as F

    from clipfit.text_encoding import encode_with_context, text_tower_or_none

    tower = text_tower_or_none(method.clip)
    if tower is None:
        raise RuntimeError(f"{type(method.clip).__name__}: no open_clip text tower")

    def class_features():
        return F.normalize(encode_with_context(tower, method.prompt_tokens, method.context(), truncate=False), dim=-1)

    method.class_features = class_features  # an instance attribute: shadows the class's method


def _use_padded(method) -> None:
    """Replace the instance's `class_features` by the shared-prefix encoding with padded attention (one
    attention call per block over all suffixes padded to the longest; CUDA's default, forced here)."""
    import torch.nn.functional as F

    from clipfit.text_encoding import encode_shared_prefix, supports_prefix_sharing, text_tower_or_none

    tower = text_tower_or_none(method.clip)
    if tower is None or not supports_prefix_sharing(tower):
        raise RuntimeError(f"{type(method.clip).__name__}: the text tower does not take the shared-prefix encoding")

    def class_features():
        features = encode_shared_prefix(tower, method.prompt_tokens, padded_attention=True, context=method.context())
        return F.normalize(features, dim=-1)

    method.class_features = class_features  # an instance attribute: shadows the class's method


def _aten_counts(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {"all": len(events), "top_level": len(top)}


def _measure(job: Job) -> dict:
    import torch

    out: dict = {}
    method, images, labels, out["prompts"] = _setup(job)
    out["threads"] = torch.get_num_threads()

    if job.path == "image forward":

        def step():
            with torch.no_grad():
                method.encode_images(images)

    else:
        if job.path == "straightforward":
            _use_straightforward(method)
        elif job.path == "ours-padded":
            _use_padded(method)
        elif job.path != "ours":
            raise ValueError(job.path)
        losses = []

        def step():
            loss = method.training_loss(images, labels)
            method.backward(loss, lambda x: x)
            losses.append(loss.total.item())
            method.zero_grad(set_to_none=True)

    out["rss_after_setup_gb"] = memory.rss_gb()
    out["peak_rss_after_setup_gb"] = memory.max_rss_gb()
    out["address_space_after_setup_gb"] = memory.address_space_gb()
    out["loadavg_before_steps"] = os.getloadavg()[0]
    step()  # warm-up
    wall, cpu = [], []
    for _ in range(job.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    out["peak_rss_after_steps_gb"] = memory.max_rss_gb()
    out["loadavg_after_steps"] = os.getloadavg()[0]
    out["step_peak_rise_gb"] = out["peak_rss_after_steps_gb"] - out["rss_after_setup_gb"]
    out.update(median_s=statistics.median(wall), times_s=wall, median_cpu_s=statistics.median(cpu), cpu_times_s=cpu)
    if job.path != "image forward":
        out["loss"] = losses[0]
    if job.profile:
        try:
            out["aten_ops_step"] = _aten_counts(step)
            if job.path != "image forward":

                def text_side():
                    method.class_features().sum().backward()
                    method.zero_grad(set_to_none=True)

                text_side()  # warm-up outside the profiler (caches, layouts)
                out["aten_ops_text"] = _aten_counts(text_side)
        except Exception as err:  # keep the times measured above
            out["profile_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    return out


def _child(job: Job, result_path: str) -> int:
    """Entry of the measuring subprocess (`--child`): cap the address space, measure, write the JSON result."""
    if job.mem_limit_gb and job.mem_limit_gb > 0:
        cap = int(job.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        result = _measure(job)
    except BaseException as err:  # reported in the results; the run goes on
        result = {
            "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500],
            "did_not_fit": _is_memory_error(err),
            "peak_rss_gb": memory.max_rss_gb(),
            "trace": traceback.format_exc(limit=4)[-2000:],
        }
    Path(result_path).write_text(json.dumps(result))
    return 0


# A process that dies under the cap without raising (the OOM killer's SIGKILL; libgomp or a C++ allocation
# outside torch's allocator failing and exiting) leaves no result; its stderr says why.
_MEMORY_WORDS = ("memory", "alloc", "resource temporarily unavailable", "bad_alloc", "thread creation failed", "mmap")


def run_isolated(job: Job) -> dict:
    """One measurement in a fresh Python process; a process killed or failing for memory is reported as not
    fitting, any other failure as an error with the end of its stderr."""
    with tempfile.TemporaryDirectory(prefix="prompt_step_") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(job)), str(result_path)]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
        elapsed = time.perf_counter() - started
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is None:
        tail = (proc.stderr or "").strip()[-1500:]
        killed = proc.returncode == -signal.SIGKILL
        memory = killed or any(w in tail.lower() for w in _MEMORY_WORDS)
        last = tail.splitlines()[-1] if tail else ""
        error = f"subprocess died with exit code {proc.returncode}"
        error += (" (SIGKILL: out of memory?)" if killed else "") + (f": {last}" if last else "")
        result = {"error": error, "did_not_fit": memory, "stderr_tail": tail}
    elif proc.stderr.strip():
        result["stderr_tail"] = proc.stderr.strip()[-1500:]
    result["subprocess_s"] = elapsed
    return result


# ---------------------------------------------------------------- in the parent


def _status(r: dict, cap: float) -> str | None:
    if "error" not in r:
        return None
    if r.get("did_not_fit"):
        return f"did not fit ({cap:g} GB cap)" if cap > 0 else "did not fit (no cap: killed or out of memory)"
    return f"error: {r['error']}"


def _image_forward_time(results: list[dict], method: str, classes: int) -> float | None:
    """The image forward measured for this method and class count, else any at this class count (the image
    tower does not depend on either)."""
    same = [r for r in results if r["path"] == "image forward" and "median_s" in r and r["classes"] == classes]
    own = [r for r in same if r["method"] == method]
    pick = own or same or [r for r in results if r["path"] == "image forward" and "median_s" in r]
    return pick[0]["median_s"] if pick else None


def table(results: list[dict], cap: float) -> str:
    head = ("| method | classes | path | suffix lengths | step s | x image forward | peak RSS GB | "
            "RSS after setup GB | aten ops (step) | aten ops (text side) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        status = _status(r, cap)
        if status:
            lines.append(f"| {r['method']} | {r['classes']} | {r['path']} | - | {status} | - | "
                         f"{_fmt(r.get('peak_rss_gb'))} | - | - | - |")
            continue
        base = _image_forward_time(results, r["method"], r["classes"])
        ratio = r["median_s"] / base if base else None
        ops = r.get("aten_ops_step", {}).get("all")
        text = r.get("aten_ops_text", {}).get("all")
        groups = r.get("prompts", {}).get("suffix_groups", "-")
        lines.append(
            f"| {r['method']} | {r['classes']} | {r['path']} | {groups} | {_fmt(r['median_s'], '.3g')} | "
            f"{_fmt(ratio)} | {_fmt(r['peak_rss_after_steps_gb'])} | {_fmt(r['rss_after_setup_gb'])} | "
            f"{ops if ops is not None else '-'} | {text if text is not None else '-'} |"
        )
    return "\n".join(lines)


def growth(results: list[dict]) -> list[str]:
    """Whether the aten operator counts grow with the number of classes, per method and path."""
    out = []
    keys = sorted({(r["method"], r["path"]) for r in results},
                  key=lambda k: (list(METHODS).index(k[0]), PATHS.index(k[1])))
    for method, path in keys:
        rows = sorted((r for r in results if (r["method"], r["path"]) == (method, path) and "aten_ops_step" in r),
                      key=lambda r: r["classes"])
        if len(rows) < 2:
            continue
        parts = []
        for field_, label in (("aten_ops_step", "step"), ("aten_ops_text", "text side")):
            counts = [(r["classes"], r[field_]["all"]) for r in rows if field_ in r]
            if len(counts) < 2:
                continue
            (c0, n0), (c1, n1) = counts[0], counts[-1]
            verdict = "constant" if n0 == n1 else f"grows by {n1 - n0:+d} ({100 * (n1 - n0) / n0:+.1f}%)"
            parts.append(f"{label} {' -> '.join(str(n) for _, n in counts)} ({verdict} from {c0} to {c1} classes)")
        out.append(f"- {method} / {path}: " + "; ".join(parts))
    return out


def check_losses(results: list[dict]) -> list[str]:
    """First-step losses of ours against ours-padded and the straightforward step (same seed, same weights):
    they must agree."""
    out = []
    for r in results:
        if r["path"] not in ("ours-padded", "straightforward") or "loss" not in r:
            continue
        ours = next((o for o in results
                     if o["path"] == "ours" and o["method"] == r["method"] and o["classes"] == r["classes"]
                     and "loss" in o), None)
        if ours:
            out.append(f"- {r['method']} {r['classes']} classes: loss ours {ours['loss']:.6f}, "
                       f"{r['path']} {r['loss']:.6f}, |diff| {abs(ours['loss'] - r['loss']):.1e}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # the measuring subprocess: --child JOB_JSON RESULT_PATH
        fields = json.loads(argv[1])
        fields["config_dirs"] = tuple(fields["config_dirs"])
        return _child(Job(**fields), argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--paths", nargs="+", default=[p.replace(" ", "-") for p in PATHS],
                        choices=[p.replace(" ", "-") for p in PATHS],
                        help="which paths to measure (default: all a method has)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (the median is reported)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mem-limit-gb", type=float, default=20.0,
                        help="address-space cap of each subprocess (RLIMIT_AS); 0: none")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each subprocess (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true", help="skip the operator counts")
    parser.add_argument("--model-config-dir", nargs="*", default=[], help="extra open_clip model config folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: benchmarks/results/prompt_step.json, "
                             "prompt_step_quick.json with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny-clip (tests/model_configs), 20 and 50 classes, 1 step: check the script works")
    args = parser.parse_args(argv)
    config_dirs = [str(Path(d).resolve()) for d in args.model_config_dir]
    if args.quick:
        args.model, args.classes, args.steps = "tiny-clip", [20, 50], 1
        config_dirs.append(str(TEST_CONFIGS))
    out = args.out or ROOT / "benchmarks" / "results" / ("prompt_step_quick.json" if args.quick else "prompt_step.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    record = {"config": {**vars(args), "out": str(out), "model_config_dir": config_dirs},
              "environment": environment("cpu"), "results": results}
    started = time.perf_counter()

    def save():
        record["wall_s"] = time.perf_counter() - started
        out.write_text(json.dumps(record, indent=2))

    for method in args.methods:
        for classes in sorted(args.classes):
            for path in METHODS[method][2]:
                if path.replace(" ", "-") not in args.paths:
                    continue
                job = Job(model=args.model, method=method, classes=classes, path=path, batch=args.batch,
                          steps=args.steps, seed=args.seed, threads=args.threads, mem_limit_gb=args.mem_limit_gb,
                          config_dirs=tuple(config_dirs), profile=not args.no_profile)
                print(f"[{args.model} {method} {classes} classes] {path} ...", flush=True)
                r = {"method": method, "classes": classes, "path": path, **run_isolated(job)}
                results.append(r)
                status = _status(r, args.mem_limit_gb)
                done = status or "{:.2f} s, peak RSS {:.2f} GB".format(r["median_s"], r["peak_rss_after_steps_gb"])
                print(f"    {done} ({r['subprocess_s']:.0f} s)", flush=True)
                save()

    threads = next((r["threads"] for r in results if "threads" in r), "?")
    print(f"\n{args.model}, batch {args.batch}, fp32, CPU, {threads} threads; "
          f"median of {args.steps} step(s) after 1 warm-up\n")
    print(table(results, args.mem_limit_gb))
    busy = [r for r in results
            if max(r.get("loadavg_before_steps", 0), r.get("loadavg_after_steps", 0)) > (os.cpu_count() or 1) + 0.5]
    if busy:
        load = max(max(r["loadavg_before_steps"], r["loadavg_after_steps"]) for r in busy)
        if any(r.get("threads", 1) > 1 for r in busy):
            why = ("torch's OpenMP threads then wait on each other at every operator, which slows many-operator "
                   "steps most; rerun on a quiet machine or with --threads 1")
        else:
            why = "wall times include time-sharing with other processes (the JSON also has CPU times)"
        print(f"\nwarning: {len(busy)} measurement(s) ran while other processes kept the CPUs busy (1-min load "
              f"average up to {load:.1f} on {os.cpu_count()} CPUs, the subprocess's own threads included): {why}")
    lines = growth(results)
    if lines:
        print("\naten operators per step against classes (all aten events, nested included):")
        print("\n".join(lines))
    lines = check_losses(results)
    if lines:
        print("\nfirst-step loss, ours against ours-padded and straightforward (same weights and batch):")
        print("\n".join(lines))
    save()
    print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
