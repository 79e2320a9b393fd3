"""Contrastive pretraining of the mini CLIP on the mini world's caption stream.

    python -m clipfit_world.pretrain --out src/clipfit/weights/mini-clip.safetensors --seed 0

Deterministic given the seed on one machine: the model init is seeded, and batch k is pairs
[k*B, (k+1)*B) of the stream `scenes.pretraining_pair(seed, i)`. Writes fp16 safetensors (with the
run's settings as metadata) and a loss curve PNG + JSON at --curve.
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
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from clipfit.text_encoding import encode_truncated
from clipfit_world.model import MEAN, MODEL_NAME, STD, create_mini_clip
from clipfit_world.scenes import pretraining_pair


@dataclass
class PretrainConfig:
    seed: int = 0
    steps: int = 3600
    batch_size: int = 128
    lr: float = 1.5e-3
    warmup: int = 100
    weight_decay: float = 0.1
    threads: int = 2
    bf16: bool = True  # bf16 autocast for the matmuls (fp32 master weights)
    checkpoint_every: int = 200


def images_to_tensor(images) -> torch.Tensor:
    """64x64 RGB PIL images -> the normalised batch open_clip's eval transform would give."""
    a = np.stack([np.asarray(im, dtype=np.uint8) for im in images]).astype(np.float32) / 255.0
    x = torch.from_numpy(a).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class _Batches(torch.utils.data.Dataset):
    """Batch k of the stream, rendered in a worker process so drawing overlaps training."""

    def __init__(self, seed: int, batch_size: int, steps: int, offset: int = 0):
        import open_clip

        self.seed, self.batch_size, self.steps, self.offset = seed, batch_size, steps, offset
        self.tokenizer = open_clip.get_tokenizer(MODEL_NAME)

    def __len__(self):
        return self.steps

    def __getitem__(self, k):
        k += self.offset
        pairs = [pretraining_pair(self.seed, k * self.batch_size + j) for j in range(self.batch_size)]
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
    labels = torch.arange(logits.shape[0])
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


def _save(model, path: Path, cfg: PretrainConfig, losses, wall: float) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    final = float(np.mean(losses[-50:]))
    meta = {"model": MODEL_NAME, **{k: str(v) for k, v in asdict(cfg).items()}, "final_loss": f"{final:.4f}",
            "wall_seconds": f"{wall:.0f}"}
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


def _checkpoint_path(cfg: PretrainConfig, directory: Path) -> Path:
    settings = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}  # it does not change the weights
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return directory / f"checkpoint_seed{cfg.seed}_{digest}.pt"


def pretrain_mini_clip(out: Path | str, seed: int = 0, steps: int = 3600, batch_size: int = 128,
                       lr: float = 1.5e-3, curve: Path | str | None = None, **kwargs) -> Path:
    """Pretrain the mini CLIP from scratch and save it as fp16 safetensors at `out`.

    One warmup + cosine schedule over `steps` batches. Every `checkpoint_every` steps the full state
    (fp32 weights, optimizer, losses) is written next to the curve, under a name derived from the
    settings; running the same command again resumes from it and gives the same weights as an
    uninterrupted run.
    """
    cfg = PretrainConfig(seed=seed, steps=steps, batch_size=batch_size, lr=lr, **kwargs)
    out = Path(out)
    curve = Path(curve) if curve else Path("runs") / "mini-clip-pretrain" / f"loss_seed{seed}.png"
    checkpoint = _checkpoint_path(cfg, curve.parent)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = create_mini_clip(pretrained=False)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    losses: list[float] = []
    wall = 0.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        losses, wall = state["losses"], state["wall_seconds"]
        print(f"resuming from {checkpoint} at step {len(losses)}")
    loader = torch.utils.data.DataLoader(_Batches(cfg.seed, cfg.batch_size, cfg.steps - len(losses), len(losses)),
                                         batch_size=None, shuffle=False, num_workers=1,
                                         worker_init_fn=_worker_init, prefetch_factor=4)
    model.train()
    start = time.time() - wall
    bar = tqdm(loader, initial=len(losses), total=cfg.steps, desc="pretrain mini-clip", dynamic_ncols=True)
    for images, tokens in bar:
        step = len(losses)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            fi = model.encode_image(images)
            ft = encode_truncated(model, tokens)
        fi, ft = F.normalize(fi.float(), dim=-1), F.normalize(ft.float(), dim=-1)
        loss = clip_loss(fi, ft, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if len(losses) % cfg.checkpoint_every == 0 and len(losses) < cfg.steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "losses": losses,
                        "wall_seconds": time.time() - start}, tmp)
            tmp.replace(checkpoint)
    wall = time.time() - start
    final = _save(model, out, cfg, losses, wall)
    plot_curve(losses, curve, f"mini-clip pretraining (seed {seed}, final {final:.3f})")
    curve.with_suffix(".json").write_text(json.dumps({"config": asdict(cfg), "wall_seconds": wall,
                                                      "final_loss": final, "losses": losses}),
                                           encoding="utf-8")
    checkpoint.unlink(missing_ok=True)
    print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB), loss curve {curve}, {wall / 60:.1f} min, "
          f"final loss {final:.3f}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = PretrainConfig()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between resumable checkpoints")
    p.add_argument("--curve", type=Path, default=None, help="loss curve PNG (default runs/mini-clip-pretrain/)")
    a = p.parse_args(argv)
    pretrain_mini_clip(a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, lr=a.lr, curve=a.curve,
                       warmup=a.warmup, threads=a.threads, bf16=a.bf16, checkpoint_every=a.checkpoint_every)


if __name__ == "__main__":
    main()
