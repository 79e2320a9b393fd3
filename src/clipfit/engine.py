"""The one training and evaluation loop that every method shares: schedules, loaders, the loop, evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import OptimConfig, complete, get_precision
from .errors import ClipFitError
from .features import encode_views, feature_batches, steps_per_epoch
from .methods import Method
from .precision import apply_precision, autocast


def lr_at_epoch(optim: OptimConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under Dassl's constant warm-up + cosine schedule.

    Epochs ``0 .. W-1`` (W = ``warmup_epochs``) run at ``warmup_lr``; epoch ``e >= W`` runs at
    ``0.5 * lr * (1 + cos(pi * (e - W) / T))``, T = ``epochs``: the cosine (T_max = T) only starts
    counting when the warm-up ends, so the first epoch after the warm-up runs at the base lr. For T = 10,
    W = 1, lr 0.002: 1e-5, 0.002, 0.0019511, ..., 0.00019098 (Dassl `dassl/optim/lr_scheduler.py`).
    """
    optim = complete(optim)
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    return 0.5 * optim.lr * (1.0 + math.cos(math.pi * (epoch - optim.warmup_epochs) / optim.epochs))


def lr_at(optim: OptimConfig, epoch: int, step: int, total_steps: int) -> float:
    """The learning rate of 0-based ``epoch`` and 0-based global ``step`` of ``total_steps``.

    "cosine-epochs": `lr_at_epoch`. "cosine-iterations": ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2``
    with t the step and T ``total_steps`` (torch's `CosineAnnealingLR(T_max=T, eta_min=min_lr)` stepped
    after every batch, as Tip-Adapter-F's `main.py` and CLIP-LoRA's `lora.py` do); warm-up epochs, if any,
    run at ``warmup_lr`` first and the cosine counts the steps after them. "constant": ``lr`` (after any
    warm-up epochs)."""
    optim = complete(optim)
    if optim.schedule == "cosine-epochs":
        return lr_at_epoch(optim, epoch)
    if epoch < optim.warmup_epochs:
        return optim.warmup_lr
    if optim.schedule == "constant":
        return optim.lr
    return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def build_optimizer(optim: OptimConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (Dassl) or AdamW (betas 0.9 / 0.999, ``eps``: Tip-Adapter-F, CLIP-LoRA)."""
    optim = complete(optim)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, eps=optim.eps, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def _loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int = 0) -> DataLoader:
    """Dassl's loaders: training samples without replacement and drops the last partial batch when the
    set holds at least one full batch (80 images at batch 32: 2 steps per epoch); evaluation keeps all."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


class TrainingDiverged(ClipFitError):
    """A loss or trainable parameter became NaN or infinite."""


def batches(loader: DataLoader):
    """The loader's batches; an error of ours raised in a data-loading worker process comes back as the
    one line it was, not wrapped in the worker's traceback (as `DataLoader` re-raises it)."""
    try:
        yield from loader
    except ClipFitError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        if loader.num_workers == 0 or len(lines) < 2:
            raise
        # The last line of a worker's traceback is "<module>.<Class>: <message>".
        message = lines[-1].split(": ", 1)[-1]
        raise type(err)(message) from None


def train(
    method: Method,
    dataset: Dataset,
    optim: OptimConfig,
    *,
    seed: int,
    plain_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    num_workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = lambda line: None,
    precision: str = "fp32",
) -> list[dict[str, float]]:
    """Train the method's trainable parameters; returns one record per epoch (lr, mean losses).

    ``dataset`` yields augmented training images; ``plain_dataset`` the same images under the evaluation
    transform and ``val_dataset`` the few-shot validation images (both read only by methods that ask:
    the linear probe's input, Tip-Adapter's search). The method's `Regime` says what happens: nothing
    (zero-shot), a one-pass fit on frozen image features computed once (`clipfit.features`), an
    optimisation on those stored features or on fresh augmentations through the image tower at every
    step, or a fit and then an optimisation. ``precision`` is a name of `PRECISIONS`. The frozen distillation target
    (`Method.prepare_training`) is computed under the same autocast as the training steps, so that it is
    the very feature the tuned model gives before its first step. Under ``fp16`` the loss is scaled by a
    `torch.amp.GradScaler`: a step whose gradients overflow is skipped and the scale lowered.

    Stops with `TrainingDiverged` (naming the epoch and step) at the first non-finite loss or trainable
    parameter, so that a diverged run never writes a result. The logged losses stay on the device and are
    fetched once per epoch.
    """
    regime = method.regime
    if not regime.trains:
        return []
    optim = complete(optim)
    torch.manual_seed(seed)
    device = method.backbone.device
    apply_precision(method, precision)

    def encode(source: Dataset, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_views(method, source, views, seed, batch_size=optim.batch_size, num_workers=num_workers,
                            autocast=lambda: autocast(device, precision))

    def stored_features(views: int) -> tuple[torch.Tensor, torch.Tensor]:
        # The linear probe reads the training images un-augmented; a caller with one dataset gives only that.
        source = plain_dataset if views == 0 and plain_dataset is not None else dataset
        started = time.time()
        features, labels = encode(source, views)
        log(
            f"frozen features: {features.shape[1]} training images x {features.shape[0]} "
            f"{'augmented views' if views else 'un-augmented view'} encoded once in {time.time() - started:.1f} s"
        )
        return features, labels

    stored = stored_features(regime.views) if regime.views is not None else None
    val = None
    if regime.fit and val_dataset is not None and len(val_dataset):
        features, labels = encode(val_dataset, 0)
        val = (features[0], labels)
    history: list[dict[str, float]] = []
    if regime.fit:
        method.eval()
        with torch.no_grad(), autocast(device, precision):
            method.prepare_training()
            history.append({"epoch": 0, **method.fit(*stored, val)})
        log(_record_line(history[-1]))
        if regime.optimise is None:
            return history
    if optim.iterations is None and (not optim.epochs or optim.epochs < 1):
        raise ValueError(f"epochs must be a positive number, got {optim.epochs!r}")
    params = [p for p in method.trainable_parameters().values()]
    if not params:
        raise ValueError(f"method {method.name!r} has nothing to train on this backbone")
    if not regime.fit:
        with autocast(device, precision):
            method.prepare_training()
    scaler = torch.amp.GradScaler(device.type) if get_precision(precision).loss_scaling else None
    optimizer = build_optimizer(optim, params)
    generator = torch.Generator().manual_seed(seed)
    if regime.optimise == "features":
        features, labels = stored
        if features.shape[0] > 1:
            log(
                f"training reads these {features.shape[0]} stored views (one drawn per image and epoch), not a fresh "
                "augmentation every step: APPROXIMATE where the official code augments afresh (augmentation=fresh does)"
            )
        per_epoch = steps_per_epoch(labels.shape[0], optim.batch_size)
        epoch_batches = lambda: feature_batches(features, labels, optim.batch_size, generator)  # noqa: E731
        loss_of = method.feature_loss
    else:
        loader = _loader(dataset, optim.batch_size, train=True, num_workers=num_workers, seed=seed)
        per_epoch = len(loader)
        epoch_batches = lambda: batches(loader)  # noqa: E731
        loss_of = method.training_loss
    total = optim.iterations or optim.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    method.train()  # the method's own modules only: the frozen backbone stays in eval mode (Method.train)
    bar = tqdm(total=total, desc=f"train {method.name}", disable=not progress, unit="step")
    done = 0
    for epoch in range(epochs):
        sums: dict[str, torch.Tensor] = {}  # on the device, in float64: fetched once, at the epoch's end
        seen = 0
        for step, (inputs, labels_) in enumerate(epoch_batches(), start=1):
            lr = lr_at(optim, epoch, done, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, labels_ = inputs.to(device, non_blocking=True), labels_.to(device, non_blocking=True)
            with autocast(device, precision):
                loss = loss_of(inputs, labels_)
            where = f"epoch {epoch + 1}, step {step} (lr {lr:.3g})"
            if not torch.isfinite(loss.total):
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss.total.item()} at {where}; no result is written"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                method.backward(loss, lambda x: x)
                optimizer.step()
            else:
                method.backward(loss, scaler.scale)
                scaler.step(optimizer)  # skipped when a gradient overflowed; the scale is then lowered
                scaler.update()
            bad = next((name for name, p in method.trainable_parameters().items() if not torch.isfinite(p).all()), None)
            if bad is not None:
                raise TrainingDiverged(
                    f"training diverged: parameter {bad} is not finite after {where}; no result is written"
                )
            n = labels_.shape[0]
            seen += n
            for key, value in {"loss": loss.total, **loss.terms}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().double() * n
            done += 1
            bar.update(1)
            if done == total:
                break
        record = {"epoch": epoch + 1, "lr": lr, **{k: float(v) / max(seen, 1) for k, v in sums.items()}}
        bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.4f}")
        history.append(record)
        log(_record_line(record))
    bar.close()
    method.eval()
    if val is not None:
        with torch.no_grad(), autocast(device, precision):
            after = method.after_training(*val)
        if after:
            history.append({"epoch": "after", **after})
            log(_record_line(history[-1]))
    return history


def _record_line(record: dict) -> str:
    """A training record as one log line: `epoch=3 lr=0.00195 loss=0.81 ...`."""
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


@torch.no_grad()
def predict_logits(
    method: Method,
    dataset: Dataset,
    *,
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "eval",
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (fp32) and labels over a dataset; the classifier (class features) is computed once, not per
    batch, and each image is encoded once."""
    method.eval()
    apply_precision(method, precision)
    device = method.backbone.device
    all_logits, all_labels = [], []
    with autocast(device, precision):
        classifier = method.classifier()
        for images, labels in tqdm(
            batches(_loader(dataset, batch_size, train=False, num_workers=num_workers)),
            desc=desc,
            disable=not progress,
            unit="batch",
        ):
            all_logits.append(method.logits(images.to(device), classifier).float().cpu())
            all_labels.append(labels)
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(method: Method, dataset: Dataset, **kwargs) -> dict[str, float]:
    logits, labels = predict_logits(method, dataset, **kwargs)
    correct = (logits.argmax(dim=-1) == labels).sum().item()
    return {"accuracy": 100.0 * correct / max(len(labels), 1), "n": len(labels)}
