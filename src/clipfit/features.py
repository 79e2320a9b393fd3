"""Frozen image features computed once, for methods that never back-propagate into the image tower.

Linear probe, Tip-Adapter(-F) and CLIP-Adapter read an image only through the frozen tower's feature.
Instead of running the tower on fresh augmentations at every step, each training image is encoded in a
fixed number of augmented views once (Tip-Adapter's cache: 10 views, `build_cache_model` in
`gaopengcuhk/Tip-Adapter:utils.py`), and training draws one of the stored views per image and epoch.
The random crop and flip of view ``v`` of image ``i`` are fixed by ``(seed, v, i)`` alone, so a view can be
recomputed by itself (`augmented_view`) and does not depend on batch size, loader order or worker count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def view_seed(seed: int, view: int, index: int) -> int:
    """The torch seed of the augmentation of view ``view`` of training image ``index`` in run ``seed``."""
    digest = hashlib.blake2b(f"{seed}/{view}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class SeededViews(Dataset):
    """``dataset``'s items, each transformed under the random state `view_seed(seed, view, index)`: the
    same augmented view whenever and wherever it is read (torch's global generator is restored after)."""

    def __init__(self, dataset: Dataset, seed: int, view: int):
        self.dataset, self.seed, self.view = dataset, seed, view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(view_seed(self.seed, self.view, index))  # the CPU generator only: fast
            return self.dataset[index]


def augmented_view(dataset: Dataset, seed: int, view: int, index: int):
    """Item ``index`` of ``dataset`` as view ``view`` of run ``seed`` transforms it (what the cache encodes)."""
    return SeededViews(dataset, seed, view)[index]


@torch.no_grad()
def encode_views(method, dataset: Dataset, views: int, seed: int, *, batch_size: int, num_workers: int = 0,
                 autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [views, N, dim] (fp32, on the backbone's device) of every item of ``dataset`` in ``views``
    augmented views, as ``method.encode_images`` gives them, and the labels [N]. ``views = 0`` encodes the
    items once as they are (``dataset`` then holds the evaluation transform: the linear probe's input):
    [1, N, dim]. ``autocast``: a context factory for the forward passes (the run's precision)."""
    device = method.backbone.device
    passes = [SeededViews(dataset, seed, v) for v in range(views)] if views > 0 else [dataset]
    features, labels = [], None
    for data in passes:
        chunks, label_chunks = [], []
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for images, batch_labels in loader:
            with autocast() if autocast else torch.autocast(device.type, enabled=False):
                chunks.append(method.encode_images(images.to(device)).float())
            label_chunks.append(batch_labels)
        features.append(torch.cat(chunks))
        labels = torch.cat(label_chunks).to(device)
    return torch.stack(features), labels


def feature_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (features [batch, dim], labels [batch]) from stored views [views, N, dim]: images in a
    random order, each with one of its views drawn at random, the last partial batch dropped when the set
    holds a full one (the image loader's rule, `engine._loader`)."""
    n = labels.shape[0]
    order = torch.randperm(n, generator=generator).to(labels.device)
    view = torch.randint(features.shape[0], (n,), generator=generator).to(labels.device)
    for step in range(steps_per_epoch(n, batch_size)):
        index = order[step * batch_size:(step + 1) * batch_size]
        yield features[view[index], index], labels[index]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of ``n`` items (the last partial batch dropped when a full one exists)."""
    return n // batch_size if n >= batch_size else 1
