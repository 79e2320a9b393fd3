"""CLIPFit step time and peak memory against the image-tower floor, and evaluation throughput.

For each model and number of classes, each measurement in a fresh `spawn` subprocess (so that its peak
memory is its own):

  floor            forward + backward of the image tower alone, its LayerNorms trainable, one batch,
                   against fixed class features, then the SGD step
  straightforward  the reference implementation's step: open_clip `encode_text` over all 77 positions,
                   twice (once for the logits, once for the distillation term), CE + beta * KD, backward
                   to every CLIPFit parameter, SGD step
  ours             clipfit's `CLIPFit.training_loss` + backward + SGD step, as `clipfit.engine.train` runs it
  exactness        ours against the straightforward computation on the same weights and batch (float32):
                   logits, loss and, up to --grad-check-max-classes, gradients. The straightforward side is
                   computed in chunks of classes, so it fits in memory at every class count.

and, once per model, evaluation throughput at --eval-classes: `clipfit.engine.predict_logits` for the
tuned (CLIPFit) and zero-shot methods against the image tower alone over the same data loader.

Models are random-init (`load_backbone(name, "none")`), images random, class names 1-4 words drawn from a
fixed word list, in the template "a photo of a {}.". Times are the median of --steps timed steps after
--warmup steps. Peak memory is the rise of the subprocess's peak resident set (Linux VmHWM, reset after
setup through /proc/self/clear_refs; ru_maxrss where that is unavailable) over its resident set after
setup, or on CUDA `max_memory_allocated` over `memory_allocated` after setup.

The straightforward step needs memory linear in classes x 77 positions (tens of GB at 500 classes on a
CPU); it is skipped, and said so, where its estimate exceeds --max-memory-gb.

    python -m benchmarks.step_time --model ViT-B-16 ViT-B-32 --batch-size 32 --classes 50 100 500 1000
    python -m benchmarks.step_time --device cuda --bf16 --out benchmarks/results/

Writes <out>/step_time_<device>[_bf16].json (after every measurement) and .png (step time and peak
memory against the number of classes).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

try:
    from . import memory
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import memory

# 240 common English words; class names are 1-4 of them, so prompts have realistic, varied lengths.
WORDS = """
apple river stone golden small bird house cat dog wild yellow green ocean tree mountain forest red fox
tiger shark flower garden car truck airplane boat tower bridge castle market kitchen church valley desert
beach island lake snow cloud storm iron wooden glass paper plastic silver copper black white blue brown
orange purple pink grey dark bright old new tall short long round square sharp soft hard heavy light
rabbit horse cow sheep goat pig duck goose eagle owl parrot swan frog snake lizard turtle whale dolphin
salmon crab lobster spider beetle butterfly bee ant moth snail worm bear wolf deer moose lion leopard
zebra giraffe elephant monkey gorilla panda koala camel kangaroo mouse rat squirrel bat hedgehog otter
seal penguin chair table desk bed lamp clock mirror window door wall roof floor stair fence gate road
street path tunnel station airport harbor farm field meadow hill cliff cave canyon volcano glacier
waterfall pond stream swamp jungle prairie bakery library museum hospital school office factory
warehouse stadium theater restaurant hotel prison temple palace cottage cabin tent barn shed garage
bicycle motorcycle bus train tram tractor ship canoe kayak rocket helmet jacket shirt dress shoe boot
hat glove scarf umbrella bag basket bottle cup plate bowl spoon fork knife pan kettle oven stove fridge
guitar piano violin drum trumpet flute camera phone computer radio television keyboard screen hammer
saw drill wrench shovel rake ladder rope chain wheel engine battery candle pillow blanket towel soap
""".split()

TEMPLATE = "a photo of a {}."
BETA = 8.0


def class_names(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(count)]


@dataclass
class Config:
    model: str
    classes: int
    batch_size: int
    device: str
    bf16: bool
    steps: int
    warmup: int
    seed: int
    threads: int | None
    template: str = TEMPLATE
    exactness_chunk: int = 50
    grad_check: bool = True
    eval_images: int = 256
    eval_batch_size: int = 64
    eval_method: str = "clipfit"
    eval_repeats: int = 1
    config_dirs: tuple[str, ...] = ()


# ---------------------------------------------------------------- measurement helpers (in the subprocess)


class MemoryMeter:
    """Peak memory rise from now on: resident set on a CPU, allocated tensors on CUDA."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2**20
            self.how = "cuda max_memory_allocated - memory_allocated after setup"
        else:
            self.base = memory.rss_gb() * 1024
            self.reset = memory.reset_peak_rss()
            if self.reset:
                self.how = "VmHWM (reset after setup) - RSS after setup"
            else:
                self.how = "ru_maxrss - RSS after setup (a setup peak above the steps' would hide theirs)"

    def peak_mb(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20 - self.base
        return memory.peak_rss_gb(self.reset) * 1024 - self.base


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(cfg: Config, device):
    import torch

    if cfg.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _setup(cfg: Config, method_name: str = "clipfit"):
    import torch

    from clipfit.backbone import load_backbone
    from clipfit.methods import build_method

    _register_configs(cfg.config_dirs)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    backbone = load_backbone(cfg.model, "none", device=cfg.device)
    options = {"beta": BETA} if method_name == "clipfit" else {}
    method = build_method(method_name, backbone, class_names(cfg.classes, cfg.seed), cfg.template, options)
    if method.regime.trains:
        method.prepare_training()
    size = backbone.preprocess.image_size
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(cfg.batch_size, 3, size, size, generator=generator).to(cfg.device)
    labels = torch.randint(0, cfg.classes, (cfg.batch_size,), generator=generator).to(cfg.device)
    return method, images, labels


def _register_configs(dirs) -> None:
    import open_clip

    for d in dirs:
        open_clip.add_model_config(d)


def _sgd(params):
    import torch

    return torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)


def _steps(cfg: Config, kind: str) -> dict:
    """Time `kind` in {floor, straightforward, ours}: median of cfg.steps after cfg.warmup, and peak memory."""
    import torch
    import torch.nn.functional as F

    method, images, labels = _setup(cfg)
    device = method.backbone.device
    clip = method.clip
    method.train()
    autocast = lambda: _autocast(cfg, device)  # noqa: E731
    if kind == "floor":
        if not method.image_norms:
            raise RuntimeError(f"{cfg.model} has no image LayerNorms: the floor is undefined")
        clip.requires_grad_(False)
        params = list(method.image_norms.values())
        for p in params:
            p.requires_grad_(True)
        fixed = method.pretrained_class_features

        def loss_fn():
            return F.cross_entropy(method.logits(images, fixed), labels)

    elif kind == "straightforward":
        params = list(method.trainable_parameters().values())
        tokens, pretrained = method.prompt_tokens, method.pretrained_class_features

        def loss_fn():
            image = F.normalize(clip.encode_image(images), dim=-1)
            text = F.normalize(clip.encode_text(tokens), dim=-1)  # all 77 positions
            ce = F.cross_entropy(clip.logit_scale.exp() * image @ text.t(), labels)
            text_again = F.normalize(clip.encode_text(tokens), dim=-1)  # the KD term's own pass
            kd = 1.0 - F.cosine_similarity(text_again, pretrained, dim=-1).mean()
            return ce + BETA * kd

    elif kind == "ours":
        params = list(method.trainable_parameters().values())

        def loss_fn():
            return method.training_loss(images, labels).total

    else:
        raise ValueError(kind)
    optimizer = _sgd(params)

    def step():
        with autocast():
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    meter = MemoryMeter(device)
    for _ in range(cfg.warmup):
        step()
    _sync(device)
    times = []
    for _ in range(cfg.steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_mb": meter.peak_mb(),
        "memory": meter.how,
        "threads": torch.get_num_threads(),
    }


def _straightforward_features(clip, tokens, chunk):
    """Full-length `encode_text`, normalised, `chunk` prompts at a time (same values as one big batch)."""
    import torch
    import torch.nn.functional as F

    return torch.cat(
        [F.normalize(clip.encode_text(tokens[i : i + chunk]), dim=-1) for i in range(0, len(tokens), chunk)]
    )


def _exactness(cfg: Config) -> dict:
    """Ours against the straightforward two-pass computation, float32, trainable parameters perturbed."""
    import torch
    import torch.nn.functional as F

    method, images, labels = _setup(cfg)
    clip, tokens, pretrained = method.clip, method.prompt_tokens, method.pretrained_class_features
    method.train()
    params = method.trainable_parameters()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():  # move away from the pretrained point so the KD term and its gradient matter
        for p in params.values():
            p.add_(0.02 * torch.randn(p.shape, generator=generator).to(p.device))
    start = time.perf_counter()
    with torch.no_grad():
        class_features = method.class_features()
        logits = method.logits(images, class_features)
        loss = method.training_loss(images, labels).total
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        text = _straightforward_features(clip, tokens, cfg.exactness_chunk)
        text_again = text  # the KD pass repeats the same deterministic computation: same values
        image = F.normalize(clip.encode_image(images), dim=-1)
        ref_logits = clip.logit_scale.exp() * image @ text.t()
        kd = 1.0 - F.cosine_similarity(text_again, pretrained, dim=-1).mean()
        ref_loss = F.cross_entropy(ref_logits, labels) + BETA * kd
    straightforward_s = time.perf_counter() - start
    out = {
        "logits_max_abs_diff": (logits.double() - ref_logits.double()).abs().max().item(),
        "logits_max_abs": ref_logits.abs().max().item(),
        "loss_abs_diff": abs(loss.item() - ref_loss.item()),
        "loss": ref_loss.item(),
        "features_max_abs_diff": (class_features.double() - text.double()).abs().max().item(),
        "forward_s": {"ours": ours_s, "straightforward_chunked": straightforward_s},
    }
    if not cfg.grad_check:
        return out
    # Gradients. Ours: the real training loss. Straightforward: the two full-length passes' gradients,
    # by the chain rule through the text features, recomputed chunk by chunk so memory stays bounded.
    names = list(params)
    loss = method.training_loss(images, labels).total
    ours = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    text_1 = text.clone().requires_grad_(True)
    text_2 = text_again.clone().requires_grad_(True)
    image = F.normalize(clip.encode_image(images), dim=-1)
    ce = F.cross_entropy(clip.logit_scale.exp() * image @ text_1.t(), labels)
    ref_loss = ce + BETA * (1.0 - F.cosine_similarity(text_2, pretrained, dim=-1).mean())
    ref_loss.backward()
    text_grad = text_1.grad + text_2.grad
    for i in range(0, len(tokens), cfg.exactness_chunk):
        chunk = slice(i, i + cfg.exactness_chunk)
        F.normalize(clip.encode_text(tokens[chunk]), dim=-1).backward(text_grad[chunk])
    groups = {"text MLP output-projection biases": set(method.text_biases), "image LayerNorms": set(method.image_norms)}
    for group, members in groups.items():
        diffs = [(a - params[n].grad).abs().max().item() for n, a in zip(names, ours) if n in members and a is not None]
        scale = max((params[n].grad.abs().max().item() for n in names if n in members), default=0.0)
        out[f"grad_max_abs_diff[{group}]"] = max(diffs, default=0.0)
        out[f"grad_max_abs[{group}]"] = scale
    return out


def _eval(cfg: Config, kind: str) -> dict:
    """Evaluation images/s: `kind` = "image-tower" (encode_image alone) or "method" (predict_logits)."""
    import torch
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from clipfit.engine import predict_logits

    method, _, _ = _setup(cfg, cfg.eval_method)
    device = method.backbone.device
    size = method.backbone.preprocess.image_size
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    images = torch.randn(cfg.eval_images, 3, size, size, generator=generator)
    dataset = TensorDataset(images, torch.randint(0, cfg.classes, (cfg.eval_images,), generator=generator))
    method.eval()

    def image_tower(data):
        with torch.no_grad():
            for batch, _ in DataLoader(data, batch_size=cfg.eval_batch_size):
                method.clip.encode_image(batch.to(device))

    def run(data):
        with _autocast(cfg, device):
            if kind == "image-tower":
                image_tower(data)
            else:
                predict_logits(method, data, batch_size=cfg.eval_batch_size, progress=False)
        _sync(device)

    run(Subset(dataset, range(min(cfg.eval_batch_size, cfg.eval_images))))  # warm-up
    meter = MemoryMeter(device)
    times, class_times = [], []
    for _ in range(max(cfg.eval_repeats, 1)):
        if kind == "method":  # the one-off cost inside predict_logits, timed on its own
            start = time.perf_counter()
            with torch.no_grad(), _autocast(cfg, device):
                method.class_features()
            _sync(device)
            class_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        run(dataset)
        times.append(time.perf_counter() - start)
    total = statistics.median(times)
    out = {"images": cfg.eval_images, "images_per_s": cfg.eval_images / total, "times_s": times,
           "peak_mb": meter.peak_mb()}
    if kind == "method":
        once = statistics.median(class_times)
        out["class_features_s"] = once
        out["images_per_s_after_class_features"] = cfg.eval_images / max(total - once, 1e-9)
    return out


def _child(job: str, cfg: Config, queue) -> None:
    try:
        if job in ("floor", "straightforward", "ours"):
            result = _steps(cfg, job)
        elif job == "exactness":
            result = _exactness(cfg)
        elif job.startswith("eval:"):
            result = _eval(cfg, job.split(":", 1)[1])
        else:
            raise ValueError(job)
    except Exception as err:  # reported in the results, the run goes on
        oom = "out of memory" in str(err).lower()
        first_line = str(err).splitlines()[0] if str(err) else ""
        result = {"error": f"{type(err).__name__}: {first_line}", "oom": oom, "trace": traceback.format_exc(limit=3)}
    queue.put(result)


def run_isolated(job: str, cfg: Config) -> dict:
    """Run one measurement in a fresh spawned process; a killed process (out of memory) is reported."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(job, cfg, queue))
    process.start()
    result = None
    while result is None:
        try:
            result = queue.get(timeout=5)
        except Exception:  # queue.Empty: check the child is alive
            if not process.is_alive():
                break
    process.join()
    if result is None:
        return {"error": f"subprocess died with exit code {process.exitcode} (killed for memory?)",
                "oom": process.exitcode == -9}
    return result


# ---------------------------------------------------------------- orchestration (in the parent)


def prompt_stats(model: str, classes: int, seed: int, template: str) -> dict:
    import open_clip

    from clipfit.text_encoding import prompt_layout

    tokens = open_clip.get_tokenizer(model)([template.format(n) for n in class_names(classes, seed)])
    layout = prompt_layout(tokens)
    eot = tokens.argmax(dim=-1)
    return {
        "mean_tokens_with_sot_eot": float((eot + 1).float().mean()),
        "longest": layout.length,
        "shared_prefix": layout.prefix,
        "positions_full": classes * tokens.shape[1],
        "positions_truncated": classes * layout.length,
        "positions_ours": layout.rows + layout.prefix,
        "examples": [template.format(n) for n in class_names(min(classes, 4), seed)],
    }


def straightforward_memory_estimate_gb(model: str, classes: int, floor_mb: float | None, measured: dict) -> float:
    """Two full-length text passes held for backward: linear in classes. From a smaller measured class
    count of the same model when there is one, else from the text tower's shape."""
    smaller = {c: r for c, r in measured.items() if c < classes and "peak_mb" in r}
    if smaller and floor_mb is not None:
        c = max(smaller)
        return (floor_mb + (smaller[c]["peak_mb"] - floor_mb) * classes / c) / 1024
    import open_clip

    text = open_clip.get_model_config(model)["text_cfg"]
    width, layers = text.get("width", 512), text.get("layers", 12)
    heads, context = text.get("heads", 8), text.get("context_length", 77)
    per_pass = classes * context * layers * (14 * width + 2 * heads * context) * 4
    return (2 * per_pass + (floor_mb or 0) * 2**20) / 2**30


def available_memory_gb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def environment(device: str) -> dict:
    import open_clip
    import torch

    env = {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version(),
           "device": device, "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        env["cpu"] = platform.processor()
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        env["loadavg_at_start"] = os.getloadavg()
    return env


def _fmt(value, spec=".2f", missing="-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def ratios(entry: dict) -> dict:
    floor, ours, straight = (entry.get(k, {}) for k in ("floor", "ours", "straightforward"))
    out = {}
    if "median_s" in floor:
        if "median_s" in ours:
            out["ours_time_over_floor"] = ours["median_s"] / floor["median_s"]
            out["ours_memory_over_floor"] = (ours["peak_mb"] / floor["peak_mb"]) if floor["peak_mb"] > 0 else None
        if "median_s" in straight:
            out["straightforward_time_over_floor"] = straight["median_s"] / floor["median_s"]
            out["straightforward_memory_over_floor"] = (
                straight["peak_mb"] / floor["peak_mb"] if floor["peak_mb"] > 0 else None
            )
    if "median_s" in ours and "median_s" in straight:
        out["speedup_over_straightforward"] = straight["median_s"] / ours["median_s"]
    return out


def print_table(model: str, per_class: dict) -> None:
    if not any(k in e for e in per_class.values() for k in ("floor", "ours", "straightforward", "exactness")):
        return
    print(f"\n{model}: step time (median, s), peak memory rise (MB), exactness (ours vs straightforward)")
    head = (f"{'classes':>7} {'floor':>8} {'straight':>9} {'ours':>8} {'ours/fl':>8} {'str/fl':>7} "
            f"{'floor MB':>9} {'ours MB':>8} {'mem/fl':>7} {'str MB':>8} "
            f"{'|dlogit|':>9} {'|dloss|':>9} {'|dgrad|rel':>10}")
    print(head)
    for classes, e in sorted(per_class.items()):
        r, x = e.get("ratios", {}), e.get("exactness", {})
        get = lambda k, f="median_s", e=e: e.get(k, {}).get(f)  # noqa: E731
        rel = [x[k] / max(x[k.replace("grad_max_abs_diff", "grad_max_abs")], 1e-30)
               for k in x if k.startswith("grad_max_abs_diff")]
        grad_rel = max(rel) if rel else None
        print(
            f"{classes:>7} {_fmt(get('floor')):>8} {_fmt(get('straightforward')):>9} {_fmt(get('ours')):>8} "
            f"{_fmt(r.get('ours_time_over_floor')):>8} {_fmt(r.get('straightforward_time_over_floor')):>7} "
            f"{_fmt(get('floor', 'peak_mb'), '.0f'):>9} {_fmt(get('ours', 'peak_mb'), '.0f'):>8} "
            f"{_fmt(r.get('ours_memory_over_floor')):>7} {_fmt(get('straightforward', 'peak_mb'), '.0f'):>8} "
            f"{_fmt(x.get('logits_max_abs_diff'), '.1e'):>9} {_fmt(x.get('loss_abs_diff'), '.1e'):>9} "
            f"{_fmt(grad_rel, '.1e'):>10}"
        )
        for kind in ("floor", "straightforward", "ours", "exactness"):
            if "error" in e.get(kind, {}) or "skipped" in e.get(kind, {}):
                print(f"{'':>7} {kind}: {e[kind].get('error') or e[kind].get('skipped')}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        per_class = results["models"][model]["classes"]
        counts = sorted(per_class, key=int)
        for col, (field_, label) in enumerate((("median_s", "step time (s)"), ("peak_mb", "peak memory rise (MB)"))):
            ax = axes[row][col]
            for kind, style in (("floor", "k--"), ("straightforward", "r-o"), ("ours", "b-o")):
                xs = [int(c) for c in counts if field_ in per_class[c].get(kind, {})]
                ys = [per_class[str(c)][kind][field_] for c in xs]
                if xs:
                    ax.plot(xs, ys, style, label=kind)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks([int(c) for c in counts], [str(c) for c in counts])
            ax.set_xlabel("classes")
            ax.set_ylabel(label)
            config = results["config"]
            bf16 = " bf16" if config["bf16"] else ""
            ax.set_title(f"{model}, batch {config['batch_size']}, {config['device']}{bf16}")
            ax.grid(True, alpha=0.3)
            if ax.get_lines():
                ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["ViT-B-16", "ViT-B-32"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, nargs="+", default=[50, 100, 500, 1000])
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast for the timed steps (exactness stays float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each subprocess (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default=TEMPLATE)
    measures = ["floor", "ours", "straightforward", "exactness", "eval"]
    parser.add_argument("--measure", nargs="+", default=measures, choices=measures)
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="skip a straightforward step estimated above this (default: 80%% of available memory)")
    parser.add_argument("--grad-check-max-classes", type=int, default=100,
                        help="compare gradients up to this many classes (logits and loss at every count)")
    parser.add_argument("--exactness-chunk", type=int, default=50)
    parser.add_argument("--eval-classes", type=int, nargs="+", default=None,
                        help="class counts for the evaluation throughput (default: the largest of --classes)")
    parser.add_argument("--eval-methods", nargs="+", default=["clipfit", "zeroshot"])
    parser.add_argument("--eval-images", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--eval-repeats", type=int, default=1, help="timed passes over the evaluation images (median)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model-config-dir", nargs="*", default=[],
                        help="extra open_clip model config folders (e.g. tests/model_configs)")
    args = parser.parse_args(argv)
    _register_configs(args.model_config_dir)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"step_time_{args.device.replace(':', '')}{'_bf16' if args.bf16 else ''}"
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    limit_gb = args.max_memory_gb if args.max_memory_gb is not None else 0.8 * available_memory_gb(args.device)
    results = {"config": {**vars(args), "out": str(args.out), "max_memory_gb": limit_gb},
               "environment": environment(args.device), "models": {}}
    started = time.perf_counter()

    def save():
        results["wall_s"] = time.perf_counter() - started
        json_path.write_text(json.dumps(results, indent=2))

    def cfg_for(model, classes, **kw):
        return Config(model=model, classes=classes, batch_size=args.batch_size, device=args.device, bf16=args.bf16,
                      steps=args.steps, warmup=args.warmup, seed=args.seed, threads=args.threads,
                      template=args.template, exactness_chunk=args.exactness_chunk,
                      config_dirs=tuple(str(d) for d in args.model_config_dir), **kw)

    for model in args.model:
        entry = results["models"].setdefault(model, {"classes": {}, "eval": {}})
        measured_straightforward: dict[int, dict] = {}
        for classes in sorted(args.classes):
            e = entry["classes"].setdefault(
                str(classes), {"prompts": prompt_stats(model, classes, args.seed, args.template)}
            )
            cfg = cfg_for(model, classes, grad_check=classes <= args.grad_check_max_classes)
            for kind in ("floor", "ours", "straightforward", "exactness"):
                if kind not in args.measure:
                    continue
                if kind == "straightforward":
                    floor_mb = e.get("floor", {}).get("peak_mb")
                    estimate = straightforward_memory_estimate_gb(model, classes, floor_mb, measured_straightforward)
                    if estimate > limit_gb:
                        skipped = f"estimated {estimate:.1f} GB > limit {limit_gb:.1f} GB (--max-memory-gb)"
                        e[kind] = {"skipped": skipped, "estimated_gb": estimate}
                        print(f"[{model} {classes} classes] straightforward skipped: {e[kind]['skipped']}", flush=True)
                        save()
                        continue
                print(f"[{model} {classes} classes] {kind} ...", flush=True)
                e[kind] = run_isolated(kind, cfg)
                if kind == "straightforward" and "peak_mb" in e[kind]:
                    measured_straightforward[classes] = e[kind]
                e["ratios"] = ratios(e)
                save()
        if "eval" in args.measure:
            for classes in args.eval_classes or [max(args.classes)]:
                jobs = [("image tower alone", "eval:image-tower", "clipfit")]
                jobs += [(m, "eval:method", m) for m in args.eval_methods]
                ev = entry["eval"].setdefault(str(classes), {})
                for label, job, method_name in jobs:
                    print(f"[{model} {classes} classes] eval {label} ...", flush=True)
                    eval_cfg = cfg_for(model, classes, eval_images=args.eval_images,
                                       eval_batch_size=args.eval_batch_size, eval_repeats=args.eval_repeats,
                                       eval_method=method_name)
                    ev[label] = run_isolated(job, eval_cfg)
                    base = ev.get("image tower alone", {}).get("images_per_s")
                    if base and "images_per_s" in ev[label] and label != "image tower alone":
                        ev[label]["over_image_tower"] = ev[label]["images_per_s"] / base
                        after = ev[label]["images_per_s_after_class_features"]
                        ev[label]["over_image_tower_after_class_features"] = after / base
                        # Images an evaluation needs for the one-off class features to cost under 10%.
                        ev[label]["images_for_0.9x"] = math.ceil(9 * ev[label]["class_features_s"] * base)
                    save()
        print_table(model, entry["classes"])
        for classes, ev in entry["eval"].items():
            print(f"{model} evaluation, {classes} classes, {args.eval_images} images (images/s; x image tower alone):")
            for label, v in ev.items():
                if "error" in v:
                    print(f"  {label}: {v['error']}")
                elif label == "image tower alone":
                    print(f"  {label}: {v['images_per_s']:.2f}")
                else:
                    print(
                        f"  {label}: {v['images_per_s']:.2f} ({_fmt(v.get('over_image_tower'))}x) end to end; "
                        f"{v['images_per_s_after_class_features']:.2f} "
                        f"({_fmt(v.get('over_image_tower_after_class_features'))}x) after the one-off class features "
                        f"({v['class_features_s']:.2f} s; >= 0.9x from {v.get('images_for_0.9x', '-')} images)"
                    )
    save()
    try:
        plot(results, png_path)
    except Exception as err:  # the numbers are in the JSON; a plotting failure must not lose the run
        print(f"plot failed: {type(err).__name__}: {err}")
    print(f"\nwrote {json_path} and {png_path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
