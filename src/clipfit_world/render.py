"""Drawing primitives of the mini world: colours, shapes, fill patterns, glyphs, backgrounds, shifts.

Everything is drawn at twice the output resolution and box-downsampled, so edges are anti-aliased.
All randomness comes from a `numpy.random.Generator` passed in: the same generator state gives the
same pixels. Arrays are float32 in [0, 255], shape (H, W, 3) at the render resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGE_SIZE = 64
SCALE = 2
CANVAS = IMAGE_SIZE * SCALE

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (45, 165, 55),
    "cyan": (40, 200, 205),
    "blue": (35, 70, 215),
    "purple": (125, 50, 185),
    "pink": (245, 135, 190),
    "brown": (125, 80, 40),
    "gray": (128, 128, 128),
    "black": (22, 22, 22),
    "white": (245, 245, 245),
}

SHAPES = (
    "circle", "square", "triangle", "star", "hexagon", "pentagon", "diamond", "cross", "heart",
    "arrow", "ring", "crescent", "oval",
)

PATTERNS = (
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "polka dots",
    "grid", "zigzag", "waves", "speckles", "concentric circles",
)

DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# Fonts of the pretraining style; downstream glyph tasks add the STIX family as an unseen style.
PRETRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
)
SHIFTED_FONTS = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")


@lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    # The fonts matplotlib ships: on every machine that installs this package, whatever its system fonts.
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def jitter_color(name: str, rng: np.random.Generator, amount: float = 14.0) -> np.ndarray:
    base = np.array(COLORS[name], dtype=np.float32)
    return np.clip(base + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


# ---------------------------------------------------------------- shapes


def _regular(n: int, cx: float, cy: float, r: float, rot: float, offset: float = -math.pi / 2):
    return [(cx + r * math.cos(offset + rot + 2 * math.pi * k / n),
             cy + r * math.sin(offset + rot + 2 * math.pi * k / n)) for k in range(n)]


def _transform(points, cx, cy, r, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


_HEART = [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                          - math.cos(4 * t)) / 17 + 0.1)
          for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
_ARROW = [(-1, -0.28), (0.2, -0.28), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.28), (-1, 0.28)]
_CROSS = [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
          (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)]


def shape_mask(shape: str, cx: float, cy: float, r: float, rot: float = 0.0) -> Image.Image:
    """An 'L' mask of `shape` centred at (cx, cy) with radius r (canvas pixels), rotated by rot radians."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        d.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    elif shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * math.cos(rot), cy + 0.45 * r * math.sin(rot)
        d.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
    elif shape == "oval":
        pts = [(math.cos(t), 0.55 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
        d.polygon(_transform(pts, cx, cy, r, rot), fill=255)
    elif shape == "square":
        d.polygon(_regular(4, cx, cy, r * 1.05, rot, offset=math.pi / 4), fill=255)
    elif shape == "triangle":
        d.polygon(_regular(3, cx, cy + 0.15 * r, r * 1.1, rot), fill=255)
    elif shape == "pentagon":
        d.polygon(_regular(5, cx, cy, r, rot), fill=255)
    elif shape == "hexagon":
        d.polygon(_regular(6, cx, cy, r, rot), fill=255)
    elif shape == "star":
        outer, inner = _regular(5, cx, cy, r * 1.1, rot), _regular(5, cx, cy, r * 0.45, rot + math.pi / 5)
        d.polygon([p for pair in zip(outer, inner) for p in pair], fill=255)
    elif shape == "diamond":
        d.polygon(_transform([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], cx, cy, r, rot), fill=255)
    elif shape == "cross":
        d.polygon(_transform(_CROSS, cx, cy, r, rot), fill=255)
    elif shape == "heart":
        d.polygon(_transform(_HEART, cx, cy, r, rot), fill=255)
    elif shape == "arrow":
        d.polygon(_transform(_ARROW, cx, cy, r, rot), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def outline(mask: Image.Image, width: int) -> Image.Image:
    """The band of `mask` within `width` canvas pixels of its edge (outside-in)."""
    size = 2 * (width // 2) + 1
    return Image.fromarray(np.asarray(mask) - np.asarray(mask.filter(ImageFilter.MinFilter(size))))


def glyph_mask(char: str, font: str, size: int, cx: float, cy: float, rot_deg: float,
               stroke: int = 0) -> Image.Image:
    img = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(img).text((cx, cy), char, font=_font(font, size), fill=255, anchor="mm",
                             stroke_width=stroke, stroke_fill=255)
    if rot_deg:
        img = img.rotate(rot_deg, resample=Image.BILINEAR, center=(cx, cy))
    return img


# ---------------------------------------------------------------- fills and backgrounds

_YY, _XX = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)


def pattern_map(pattern: str, period: float, rng: np.random.Generator) -> np.ndarray:
    """A (CANVAS, CANVAS) float map in [0, 1]: 1 where the pattern's ink is."""
    ph = rng.uniform(0, period)
    y, x = _YY + ph, _XX + rng.uniform(0, period)
    half = period / 2
    if pattern == "horizontal stripes":
        m = (y % period) < half
    elif pattern == "vertical stripes":
        m = (x % period) < half
    elif pattern == "diagonal stripes":
        m = ((x + y) % (period * 1.4)) < half * 1.4
    elif pattern == "checkerboard":
        m = ((x // half + y // half) % 2) == 0
    elif pattern == "polka dots":
        m = ((x % period - half) ** 2 + (y % period - half) ** 2) < (period * 0.28) ** 2
    elif pattern == "grid":
        w = max(2.0, period * 0.18)
        m = ((x % period) < w) | ((y % period) < w)
    elif pattern == "zigzag":
        tri = np.abs((x % period) - half) * 1.2
        m = ((y + tri) % period) < half
    elif pattern == "waves":
        m = ((y + period * 0.35 * np.sin(2 * math.pi * x / (period * 2))) % period) < half
    elif pattern == "speckles":
        cell = max(2, int(period / 3))
        small = rng.random((CANVAS // cell + 1, CANVAS // cell + 1)) < 0.3
        m = np.kron(small, np.ones((cell, cell), dtype=bool))[:CANVAS, :CANVAS]
    elif pattern == "concentric circles":
        cx, cy = rng.uniform(0.3, 0.7) * CANVAS, rng.uniform(0.3, 0.7) * CANVAS
        m = (np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2) % period) < half
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return m.astype(np.float32)


def two_tone(m: np.ndarray, ink: np.ndarray, paper: np.ndarray) -> np.ndarray:
    return m[..., None] * ink + (1 - m[..., None]) * paper


BACKGROUNDS = ("white", "dark", "colored", "gradient", "noisy")


def background(kind: str, rng: np.random.Generator, color: str | None = None) -> np.ndarray:
    if kind == "white":
        return np.broadcast_to(rng.uniform(228, 255, 3).astype(np.float32), (CANVAS, CANVAS, 3)).copy()
    if kind == "dark":
        return np.broadcast_to(rng.uniform(0, 40, 3).astype(np.float32), (CANVAS, CANVAS, 3)).copy()
    if kind == "colored":
        c = 0.45 * jitter_color(color or "blue", rng) + 0.55 * 235
        return np.broadcast_to(c.astype(np.float32), (CANVAS, CANVAS, 3)).copy()
    if kind == "gradient":
        a, b = rng.uniform(150, 255, 3), rng.uniform(150, 255, 3)
        t = (_YY / CANVAS) if rng.random() < 0.5 else (_XX / CANVAS)
        return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)
    if kind == "noisy":
        base = rng.uniform(170, 240, 3)
        low = (rng.normal(0, 14, (8, 8, 1)) + rng.normal(0, 8, (8, 8, 3))).astype(np.float32)
        low = np.stack([np.asarray(Image.fromarray(low[..., c]).resize((CANVAS, CANVAS), Image.BICUBIC))
                        for c in range(3)], axis=-1)
        return np.clip(base + low, 0, 255).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


def composite(canvas: np.ndarray, mask: Image.Image, fill: np.ndarray) -> np.ndarray:
    a = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    return canvas * (1 - a) + fill * a


def finish(canvas: np.ndarray) -> Image.Image:
    """Canvas -> the output 64x64 RGB image (box downsampling)."""
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


# ---------------------------------------------------------------- downstream shifts (on 64x64 images)


@dataclass(frozen=True)
class Shift:
    """A change of style applied to a downstream task's images, relative to the pretraining style."""

    name: str
    description: str


def add_noise(img: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, sigma, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "RGB")


def blur(img: Image.Image, radius: float) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def low_contrast(img: Image.Image, contrast: float, saturation: float, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    gray = a.mean(axis=2, keepdims=True)
    a = gray + (a - gray) * saturation
    centre = rng.uniform(100, 160)
    a = centre + (a - a.mean()) * contrast
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "RGB")


def tint(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """A coloured illuminant: per-channel gains and an overall exposure change."""
    gains = 1 + rng.uniform(-strength, strength, 3)
    exposure = rng.uniform(1 - strength, 1 + strength * 0.5)
    a = np.asarray(img, dtype=np.float32) * gains * exposure
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "RGB")


def clutter(canvas: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random distractor strokes and blobs in random colours, drawn onto the canvas."""
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    names = list(COLORS)
    for _ in range(n):
        col = tuple(int(v) for v in jitter_color(names[rng.integers(len(names))], rng, 30))
        x0, y0 = rng.uniform(0, CANVAS, 2)
        if rng.random() < 0.6:
            x1, y1 = x0 + rng.normal(0, 30), y0 + rng.normal(0, 30)
            d.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(2, 6)))
        else:
            s = rng.uniform(3, 9)
            d.ellipse([x0 - s, y0 - s, x0 + s, y0 + s], fill=col)
    return np.asarray(img, dtype=np.float32)
