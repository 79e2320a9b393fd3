"""Contrastive pretraining of the built-in mini CLIPs on the mini world's caption stream.

    python -m clipfit_world.pretrain --model mini-clip --out src/clipfit_world/weights/mini-clip.safetensors
    python -m clipfit_world.pretrain --model mini-clip-b --out src/clipfit_world/weights/mini-clip-b.safetensors \
        [--device cuda] [--workers 8] [--minutes 150]

Deterministic given the seed on one CPU machine (on a GPU, up to its kernels' rounding): the model init
is seeded, and batch k is pairs [k*B, (k+1)*B) of the stream `scenes.pretraining_pair(seed, i, captions)`,
drawn by ``--workers`` render processes. Each model's schedule is its entry in `RECIPES`. The full state
is checkpointed every few minutes under a name derived from the settings, so the same command resumes
where a run stopped, with the same weights as an uninterrupted run on the same machine and thread count;
``--minutes`` stops a piece after that long (at a checkpoint, exit status 75), so a long CPU pretraining
can run in pieces; run again once finished, it finds the weights made and does nothing. Writes fp16
safetensors (with the run's settings as metadata) and a loss curve PNG + JSON at --curve.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from clipfit.backbone import architectures
from clipfit.errors import ClipFitError
from clipfit.files import Lock
from clipfit.text_encoding import encode_truncated
from clipfit_world.model import MEAN, MODEL_NAME, STD, create_mini_clip
from clipfit_world.scenes import CAPTIONS, pretraining_pair


@dataclass
class PretrainConfig:
    model: str = MODEL_NAME
    captions: str = "v1"  # scenes.CAPTIONS
    seed: int = 0
    steps: int = 3600
    batch_size: int = 128
    lr: float = 1.5e-3
    warmup: int = 100
    weight_decay: float = 0.1
    threads: int = 2
    bf16: bool = True  # bf16 autocast for the matmuls (fp32 master weights)
    checkpoint_every: int = 200
    checkpoint_minutes: float = 5.0
    device: str = "cpu"
    workers: int = 1  # render processes


# Settings left out of a checkpoint's name. The first three never change the weights. The device does (GPU
# kernels round differently), but it is left out on purpose, so that a piece on a GPU and a piece on CPU
# continue one run; bit-exact resumption holds within one device. Each piece's device is in `pieces`.
NOT_IDENTITY = ("checkpoint_every", "checkpoint_minutes", "device", "workers")

PIECE_STOPPED = 75  # the exit status of a piece stopped by --minutes (sysexits' EX_TEMPFAIL)

# Each built-in model's pretraining recipe, the defaults of `--model`. mini-clip's is the one its shipped
# weights were made with (README, "The built-in mini CLIPs").
RECIPES: dict[str, dict] = {
    "mini-clip": {"captions": "v1", "steps": 3600, "batch_size": 128, "lr": 1.5e-3, "warmup": 100},
    "mini-clip-b": {"captions": "v2", "steps": 6000, "batch_size": 128, "lr": 1e-3, "warmup": 300},
}


def images_to_tensor(images) -> torch.Tensor:
    """64x64 RGB PIL images -> the normalised batch open_clip's eval transform would give."""
    a = np.stack([np.asarray(im, dtype=np.uint8) for im in images]).astype(np.float32) / 255.0
    x = torch.from_numpy(a).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class _Batches(torch.utils.data.Dataset):
    """Batch k of the stream, rendered in a worker process so drawing overlaps training."""

    def __init__(self, cfg: PretrainConfig, steps: int, offset: int = 0):
        import open_clip

        self.seed, self.captions, self.batch_size = cfg.seed, cfg.captions, cfg.batch_size
        self.steps, self.offset = steps, offset
        self.tokenizer = open_clip.get_tokenizer(cfg.model)

    def __len__(self):
        return self.steps

    def __getitem__(self, k):
        k += self.offset
        pairs = [pretraining_pair(self.seed, k * self.batch_size + j, self.captions) for j in range(self.batch_size)]
        return images_to_tensor([p[0] for p in pairs]), self.tokenizer([p[1] for p in pairs])


def _worker_init(_):
    torch.set_num_threads(1)


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "embedding" in name or name in ("logit_scale", "visual.class_embedding")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_loss(image_features, text_features, logit_scale):
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def plot_curve(losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="batch")
    w = max(1, len(losses) // 50)
    if len(losses) >= w:
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _save(model, path: Path, cfg: PretrainConfig, losses, pieces: list[dict], wall: float) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    final = float(np.mean(losses[-50:]))
    meta = {**{k: str(v) for k, v in identity_settings(cfg).items()}, "final_loss": f"{final:.4f}",
            "wall_seconds": f"{wall:.0f}", "pairs_seen": str(len(losses) * cfg.batch_size),
            "pieces": json.dumps(pieces)}  # where each piece ran: device, threads, workers, steps, seconds
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors writes 0600; the file ships with the package
    tmp.replace(path)
    return final


def _lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def identity_settings(cfg: PretrainConfig) -> dict:
    """The settings that name a run: its checkpoint's file name, and the metadata a finished file is known by."""
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_IDENTITY}


def _checkpoint_path(cfg: PretrainConfig, directory: Path) -> Path:
    digest = hashlib.sha256(json.dumps(identity_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return directory / f"checkpoint_{cfg.model}_seed{cfg.seed}_{digest}.pt"


def pretrain_mini_clip(out: Path | str, model: str = MODEL_NAME, seed: int = 0, curve: Path | str | None = None,
                       minutes: float | None = None, **kwargs) -> Path | None:
    """Pretrain the built-in model ``model`` from scratch and save it as fp16 safetensors at `out`.

    One warmup + cosine schedule over `steps` batches, with `RECIPES[model]` as the defaults of the
    settings not given in ``kwargs`` (`PretrainConfig`'s fields). The full state (fp32 weights, optimizer,
    losses, the time each piece took) is written next to the curve every `checkpoint_every` steps and every
    `checkpoint_minutes`, under a name derived from the settings; running the same command again resumes
    from it and gives the same weights as an uninterrupted run. With ``minutes``, this piece stops at the
    first step after that many minutes, checkpointed, and returns None; otherwise it returns `out`.
    """
    cfg = PretrainConfig(model=model, seed=seed, **{**RECIPES[model], **kwargs})
    out = Path(out)
    curve = Path(curve) if curve else Path("runs") / f"{model}-pretrain" / f"loss_seed{seed}.png"
    checkpoint = _checkpoint_path(cfg, curve.parent)
    if not checkpoint.is_file() and _made_by(out, cfg):
        print(f"{out} was made by these settings already (its metadata says so); nothing to do")
        return out
    # Two copies of one command would write one checkpoint: the second is refused, naming the first.
    # The lock file stays (deleting a lock file others may open races); hidden, it is not taken for a checkpoint.
    with Lock(lock_path(checkpoint), f"the pretraining checkpoint {checkpoint}"):
        return _pretrain(cfg, out, curve, checkpoint, minutes)


def lock_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(f".{checkpoint.stem}.lock")


def _made_by(out: Path, cfg: PretrainConfig) -> bool:
    """Whether ``out`` holds weights this run's settings finished (its metadata records them)."""
    if not out.is_file():
        return False
    try:
        with safe_open(str(out), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # not a safetensors file: it is not ours to trust, the run makes it again
        return False
    return all(meta.get(k) == str(v) for k, v in identity_settings(cfg).items())


def stream_identity(cfg: PretrainConfig) -> dict[str, str]:
    """What the weights depend on beyond the settings in the checkpoint's name: the architecture's open_clip
    config, and the caption stream (the SHA-256 of its first 32 captions), so that a checkpoint is never
    resumed by code that would draw another stream or build another model."""
    architectures()  # open_clip learns the built-in configs from the plugin
    config = json.dumps(open_clip.get_model_config(cfg.model), sort_keys=True)
    captions = "\n".join(pretraining_pair(cfg.seed, i, cfg.captions)[1] for i in range(32))
    return {"model config": hashlib.sha256(config.encode()).hexdigest(),
            "caption stream": hashlib.sha256(captions.encode()).hexdigest()}


def _load_checkpoint(checkpoint: Path, identity: dict[str, str]) -> dict:
    try:
        # On the CPU: load_state_dict moves each tensor where its parameter is, and keeps Adam's step counts on
        # the CPU, where torch's non-capturable AdamW wants them.
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    except Exception as err:  # torch.load fails in many ways on a damaged file; each means the same to the user
        raise ClipFitError(f"the pretraining checkpoint {checkpoint} cannot be read (damaged or cut short: torch.load "
                           f"raised {type(err).__name__}); move it away to start the run again") from None
    if "identity" not in state:
        print(f"note: {checkpoint} predates the stream check, so its model config and captions are not compared")
    else:
        changed = [k for k in identity if state["identity"].get(k) != identity[k]]
        if changed:
            raise ClipFitError(f"{checkpoint} was made with another {' and '.join(changed)} than this code has, so "
                               "resuming it would mix two runs; move it away to start again")
    return state


def _pretrain(cfg: PretrainConfig, out: Path, curve: Path, checkpoint: Path, minutes: float | None) -> Path | None:
    device = torch.device(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net = create_mini_clip(pretrained=False, name=cfg.model).to(device)
    opt = torch.optim.AdamW(_param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    losses: list[float] = []
    pieces: list[dict] = []  # one per run of the command: steps done, seconds, where
    identity = stream_identity(cfg)
    if checkpoint.is_file():
        state = _load_checkpoint(checkpoint, identity)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        losses, pieces = state["losses"], state["pieces"]
        print(f"resuming from {checkpoint} at step {len(losses)}")
    piece = {"first_step": len(losses), "steps": 0, "seconds": 0.0, "device": str(device),
             "threads": cfg.threads, "workers": cfg.workers}
    pieces.append(piece)
    loader = torch.utils.data.DataLoader(_Batches(cfg, cfg.steps - len(losses), len(losses)),
                                         batch_size=None, shuffle=False, num_workers=cfg.workers,
                                         worker_init_fn=_worker_init, prefetch_factor=4 if cfg.workers else None,
                                         pin_memory=device.type == "cuda")
    net.train()
    start = last_checkpoint = time.time()

    def write_checkpoint():
        piece["seconds"] = time.time() - start
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "losses": losses,
                    "pieces": pieces, "identity": identity}, tmp)
        tmp.replace(checkpoint)
        _write_curve(curve, cfg, losses, pieces)

    bar = tqdm(loader, initial=len(losses), total=cfg.steps, desc=f"pretrain {cfg.model}", dynamic_ncols=True)
    for images, tokens in bar:
        step = len(losses)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            fi = net.encode_image(images)
            ft = encode_truncated(net, tokens)
        fi, ft = F.normalize(fi.float(), dim=-1), F.normalize(ft.float(), dim=-1)
        loss = clip_loss(fi, ft, net.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            net.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        piece["steps"] += 1
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{net.logit_scale.exp().item():.1f}")
        if len(losses) < cfg.steps:
            now = time.time()
            stop = minutes is not None and now - start >= 60 * minutes
            if stop or len(losses) % cfg.checkpoint_every == 0 or now - last_checkpoint >= 60 * cfg.checkpoint_minutes:
                write_checkpoint()
                last_checkpoint = now
            if stop:
                bar.close()
                print(f"stopped after {piece['seconds'] / 60:.1f} min at step {len(losses)} of {cfg.steps}; "
                      f"the same command resumes from {checkpoint}")
                return None
    piece["seconds"] = time.time() - start
    wall = sum(p["seconds"] for p in pieces)
    final = _save(net, out, cfg, losses, pieces, wall)
    _write_curve(curve, cfg, losses, pieces)
    checkpoint.unlink(missing_ok=True)
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB), loss curve {curve}, {wall / 60:.1f} min, "
          f"final loss {final:.3f}")
    return out


def _write_curve(curve: Path, cfg: PretrainConfig, losses: list[float], pieces: list[dict]) -> None:
    """The loss curve PNG and the JSON behind it (settings, every loss, each piece's steps and time)."""
    final = float(np.mean(losses[-50:])) if losses else float("nan")
    plot_curve(losses, curve, f"{cfg.model} pretraining (seed {cfg.seed}, step {len(losses)}, loss {final:.3f})")
    wall = sum(p["seconds"] for p in pieces)
    text = json.dumps({"config": asdict(cfg), "wall_seconds": wall, "final_loss": final,
                       "pairs_seen": len(losses) * cfg.batch_size, "pieces": pieces, "losses": losses})
    tmp = curve.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(curve.with_suffix(".json"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = PretrainConfig()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", choices=sorted(RECIPES), default=MODEL_NAME,
                   help="the built-in model; its recipe (RECIPES) gives the defaults of the schedule's flags")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--captions", choices=CAPTIONS, help="caption style (default: the model's recipe)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (part of the checkpoint's identity)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=d.workers, help="render processes drawing the world")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between resumable checkpoints")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
                   help="minutes between resumable checkpoints")
    p.add_argument("--minutes", type=float, help=f"stop this piece after this many minutes, checkpointed, with exit "
                   f"status {PIECE_STOPPED} (the same command resumes it); 0 once it is done")
    p.add_argument("--curve", type=Path, default=None, help="loss curve PNG (default runs/<model>-pretrain/)")
    a = p.parse_args(argv)
    given = {k: getattr(a, k) for k in ("captions", "steps", "batch_size", "lr", "warmup") if getattr(a, k) is not None}
    made = pretrain_mini_clip(a.out, model=a.model, seed=a.seed, curve=a.curve, minutes=a.minutes,
                              threads=a.threads, bf16=a.bf16, device=a.device, workers=a.workers,
                              checkpoint_every=a.checkpoint_every, checkpoint_minutes=a.checkpoint_minutes, **given)
    if made is None:  # a piece stopped before the end: EX_TEMPFAIL, so a driver loop knows to run it again
        raise SystemExit(PIECE_STOPPED)


if __name__ == "__main__":
    main()
