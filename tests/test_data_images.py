"""Images to tensors: ImageDataset and CLIP's train/test transforms, as the official CLIPFit code runs them
(minglllli/CLIPFit @4dde049 `configs/trainers/ClipFit/vit_b16.yaml` through KaiyangZhou/Dassl.pytorch @c61a1b5
`dassl/data/transforms/transforms.py`: RandomResizedCrop(224, scale 0.08-1, bicubic) + flip for training;
resize the short side to 224, bicubic, and center crop 224 for testing; CLIP's mean/std)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipfit.data import ImageDataset, Sample, test_transform, train_transform
from clipfit.errors import DataError

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def png(path: Path, size=(40, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)
    return path


def test_image_dataset_returns_tensor_and_label(tmp_path):
    ds = ImageDataset([Sample(png(tmp_path / "a.png"), 3, "cat")])
    x, y = ds[0]
    assert len(ds) == 1 and y == 3 and x.shape == (3, 30, 40) and x.dtype == torch.float32


def test_image_dataset_converts_grayscale_to_rgb(tmp_path):
    x, _ = ImageDataset([Sample(png(tmp_path / "g.png", mode="L"), 0, "x")], test_transform(16, MEAN, STD))[0]
    assert x.shape == (3, 16, 16)


def test_unreadable_image_raises_naming_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"image {bad} cannot be read"):
        ImageDataset([Sample(bad, 0, "x")])[0]


def test_truncated_image_raises_naming_the_file(tmp_path):
    path = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=f"image {path} cannot be read"):
        ImageDataset([Sample(path, 0, "x")])[0]


def test_missing_image_raises_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=f"image {tmp_path / 'gone.png'} not found"):
        ImageDataset([Sample(tmp_path / "gone.png", 0, "x")])[0]


def test_train_transform_is_random_resized_crop_008_1_bicubic_then_flip_then_normalise():
    steps = train_transform(224, MEAN, STD).transforms
    crop = next(t for t in steps if isinstance(t, T.RandomResizedCrop))
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0)
    assert crop.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(steps[steps.index(crop) + 1], T.RandomHorizontalFlip)
    norm = steps[-1]
    assert isinstance(norm, T.Normalize) and tuple(norm.mean) == MEAN and tuple(norm.std) == STD


def test_train_transform_crop_scale_is_configurable():
    steps = train_transform(32, MEAN, STD, crop_scale=(0.5, 1.0)).transforms
    assert next(t for t in steps if isinstance(t, T.RandomResizedCrop)).scale == (0.5, 1.0)


def test_train_transform_without_flips_for_what_a_mirror_would_relabel():
    steps = train_transform(32, MEAN, STD, hflip=False).transforms
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in steps)


def test_test_transform_resizes_short_side_bicubic_then_center_crops(tmp_path):
    steps = test_transform(224, MEAN, STD).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    assert resize.size in (224, [224]) and resize.interpolation == T.InterpolationMode.BICUBIC
    assert any(isinstance(t, T.CenterCrop) and tuple(t.size) == (224, 224) for t in steps)
    x, _ = ImageDataset([Sample(png(tmp_path / "w.png", size=(90, 30)), 0, "x")], test_transform(24, MEAN, STD))[0]
    assert x.shape == (3, 24, 24)


def test_train_transform_output_shape(tmp_path):
    x, _ = ImageDataset([Sample(png(tmp_path / "a.png"), 0, "x")], train_transform(24, MEAN, STD))[0]
    assert x.shape == (3, 24, 24)


def test_decoded_image_cache_decodes_each_image_once_within_its_budget(tmp_path, monkeypatch):
    import clipfit.data.images as images

    rng = np.random.default_rng(0)
    sizes = [(90, 60), (50, 120), (33, 33)]
    samples = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, 0, "x"))
    plain = ImageDataset(samples, test_transform(24, MEAN, STD))
    # Room for the first two images (PIL's 4 bytes a pixel: 90*60*4 + 50*120*4 = 45,600 bytes), not the third.
    cached = ImageDataset(samples, test_transform(24, MEAN, STD), cache_bytes=45_600 + 100)
    for i in range(len(samples)):
        assert torch.equal(plain[i][0], cached[i][0])
    assert cached.cached_bytes == 45_600

    opened = []
    real = images.open_image
    monkeypatch.setattr(images, "open_image", lambda path: opened.append(path.name) or real(path))
    for _ in range(3):
        for i in range(len(samples)):
            cached[i]
    assert opened == ["2.jpg"] * 3  # past the budget: decoded on every read; the others came from the cache
