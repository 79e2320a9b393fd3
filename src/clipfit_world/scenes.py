"""Pretraining scenes of the mini world and their captions.

A pair is a function of (seed, index) alone: `pretraining_pair(seed, i)` draws from
`numpy.random.default_rng([seed, i])`, so the stream is deterministic, indexable and order-free.
Captions mention a random subset of what is drawn, in varied templates and synonyms, so the text
tower has to learn words, not one template. Two caption styles (`CAPTIONS`): v1, the stream mini-clip was
pretrained on (pinned by a test), and v2, the same images described in richer language (mini-clip-b's).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from clipfit_world import render as R

SHAPE_WORDS = {
    "circle": ["circle", "circle", "disc", "round shape"],
    "square": ["square", "square", "box"],
    "triangle": ["triangle"],
    "star": ["star", "star", "five-pointed star"],
    "hexagon": ["hexagon", "hexagon", "six-sided shape"],
    "pentagon": ["pentagon", "pentagon", "five-sided shape"],
    "diamond": ["diamond", "diamond", "rhombus"],
    "cross": ["cross", "cross", "plus sign"],
    "heart": ["heart"],
    "arrow": ["arrow", "arrow", "arrow shape"],
    "ring": ["ring", "ring", "donut"],
    "crescent": ["crescent", "crescent", "moon shape"],
    "oval": ["oval", "oval", "ellipse"],
}
SHAPE_PLURAL = {"cross": "crosses", "circle": "circles", "square": "squares", "triangle": "triangles",
                "star": "stars", "hexagon": "hexagons", "pentagon": "pentagons", "diamond": "diamonds",
                "heart": "hearts", "arrow": "arrows", "ring": "rings", "crescent": "crescents", "oval": "ovals"}
COLOR_WORDS = {
    "red": ["red", "red", "crimson"], "orange": ["orange"], "yellow": ["yellow"],
    "green": ["green"], "cyan": ["cyan", "cyan", "turquoise"], "blue": ["blue"],
    "purple": ["purple", "purple", "violet"], "pink": ["pink"], "brown": ["brown"],
    "gray": ["gray", "grey"], "black": ["black"], "white": ["white"],
}
# pattern -> (adjectives, "with ..." phrases, noun phrases)
PATTERN_WORDS = {
    "horizontal stripes": (["horizontally striped"], ["with horizontal stripes"], ["horizontal stripes"]),
    "vertical stripes": (["vertically striped"], ["with vertical stripes"], ["vertical stripes"]),
    "diagonal stripes": (["diagonally striped"], ["with diagonal stripes"], ["diagonal stripes"]),
    "checkerboard": (["checkered"], ["with a checkerboard pattern"], ["checkerboard", "checks"]),
    "polka dots": (["dotted", "polka-dot"], ["with polka dots", "with dots"], ["polka dots", "dots"]),
    "grid": (["grid-patterned"], ["with a grid pattern"], ["grid", "grid lines"]),
    "zigzag": (["zigzag"], ["with zigzags"], ["zigzag", "zigzag lines"]),
    "waves": (["wavy"], ["with wavy lines"], ["waves", "wavy lines"]),
    "speckles": (["speckled"], ["with speckles"], ["speckles", "random specks"]),
    "concentric circles": (["bullseye"], ["with concentric circles"], ["concentric circles"]),
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BACKGROUND_WORDS = {
    "white": ["white", "plain white", "light"], "dark": ["dark", "black"], "gradient": ["gradient"],
    "noisy": ["textured", "noisy", "mottled"],
}
PREFIXES = ["a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "{}", "{}", "{}",
            "there is {} here", "a rendering of {}", "a close-up of {}"]

# Share of pretraining images with a busy background or a mild camera degradation. The downstream
# shifts are stronger versions (dense clutter, heavy blur and noise) combined with what pretraining
# never shows (unseen fonts, washed-out palettes, sketches).
BUSY_BACKGROUND = 0.25
DEGRADED = 0.25


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou8" else "a ") + phrase


def _contrasting_color(rng: np.random.Generator, bg: str, exclude: tuple[str, ...] = ()) -> str:
    banned = set(exclude) | ({"white"} if bg in ("white", "gradient", "noisy", "colored") else set())
    banned |= {"black"} if bg == "dark" else set()
    names = [c for c in R.COLORS if c not in banned]
    return _pick(rng, names)


def _background(rng: np.random.Generator):
    kind = _pick(rng, R.BACKGROUNDS)
    bg_color = _pick(rng, ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"])
    canvas = R.background(kind, rng, bg_color)
    busy = rng.random() < BUSY_BACKGROUND
    if busy:  # a few uncaptioned strokes, as web photos have things nobody mentions
        canvas = R.clutter(canvas, rng, int(rng.integers(1, 4)))
    return kind, bg_color, canvas, busy


def _bg_phrase(rng, kind, bg_color) -> str:
    word = ("light " + _pick(rng, COLOR_WORDS[bg_color])) if kind == "colored" else _pick(rng, BACKGROUND_WORDS[kind])
    return f"on a {word} background"


def _fill(rng, color: str, pattern: str | None, r: float) -> np.ndarray:
    ink = R.jitter_color(color, rng)
    if pattern is None:
        return np.broadcast_to(ink, (R.CANVAS, R.CANVAS, 3))
    paper = np.array(R.COLORS["white"] if color != "white" else R.COLORS["black"], np.float32)
    period = rng.uniform(0.3, 0.55) * r
    return R.two_tone(R.pattern_map(pattern, max(period, 8.0), rng), ink, paper)


def _position_word(cx: float, cy: float) -> str | None:
    col = "left" if cx < 0.38 * R.CANVAS else "right" if cx > 0.62 * R.CANVAS else None
    row = "top" if cy < 0.38 * R.CANVAS else "bottom" if cy > 0.62 * R.CANVAS else None
    if row and col:
        return f"in the {row} {col}"
    if row or col:
        return f"at the {row or col}" if row else f"on the {col}"
    return "in the center"


def draw_object(rng, canvas, shape, color, pattern, r, cx, cy, hollow=False):
    rot = rng.uniform(-0.35, 0.35) if shape != "crescent" else rng.uniform(0, 2 * math.pi)
    mask = R.shape_mask(shape, cx, cy, r, rot)
    if hollow:
        mask = R.outline(mask, max(5, int(r * 0.28)))
    return R.composite(canvas, mask, _fill(rng, color, pattern, r))


def object_phrase(rng, shape, color, pattern, size_word, hollow) -> str:
    noun = _pick(rng, SHAPE_WORDS[shape])
    adj = []
    if size_word and rng.random() < 0.5:
        adj.append(size_word)
    post = ""
    if hollow:
        adj.append(_pick(rng, ["hollow", "outlined"]))
    if color and rng.random() < 0.65:
        adj.append(_pick(rng, COLOR_WORDS[color]))
    if pattern and rng.random() < 0.7:
        pa, pw, _ = PATTERN_WORDS[pattern]
        if rng.random() < 0.5:
            adj.append(_pick(rng, pa))
        else:
            post = " " + _pick(rng, pw)
    elif pattern is None and not hollow and rng.random() < 0.12:
        adj.append(_pick(rng, ["solid", "plain"]))
    phrase = " ".join(adj + [noun]) + post
    if hollow and rng.random() < 0.4:
        return "the outline of " + _a(" ".join([w for w in adj if w not in ("hollow", "outlined")] + [noun]) + post)
    return _a(phrase)


def single_object(rng) -> tuple[np.ndarray, str, bool]:
    kind, bg_color, canvas, busy = _background(rng)
    shape = _pick(rng, R.SHAPES)
    color = _contrasting_color(rng, kind)
    u = rng.random()
    hollow = u < 0.1
    pattern = _pick(rng, R.PATTERNS) if 0.1 <= u < 0.45 else None
    big = rng.random() < 0.5
    r = rng.uniform(36, 50) if big else rng.uniform(20, 32)
    cx, cy = rng.uniform(r + 4, R.CANVAS - r - 4, 2)
    canvas = draw_object(rng, canvas, shape, color, pattern, r, cx, cy, hollow)
    size_word = _pick(rng, ["large", "big"]) if r > 40 else _pick(rng, ["small", "little"]) if r < 26 else None
    np_ = object_phrase(rng, shape, color, pattern, size_word, hollow)
    extras = []
    if rng.random() < 0.3:
        extras.append(_bg_phrase(rng, kind, bg_color))
    if rng.random() < 0.25:
        extras.append(_position_word(cx, cy))
    rng.shuffle(extras)
    return canvas, _pick(rng, PREFIXES).format(" ".join([np_] + extras)), busy


def glyph(rng) -> tuple[np.ndarray, str, bool]:
    kind, bg_color, canvas, busy = _background(rng)
    is_digit = rng.random() < 0.45
    char = _pick(rng, R.DIGITS) if is_digit else _pick(rng, R.LETTERS)
    upper = (not is_digit) and rng.random() < 0.5
    shown = char.upper() if upper else char
    font = _pick(rng, R.PRETRAIN_FONTS)
    size = int(rng.integers(14, 26)) * 4
    cx, cy = rng.uniform(0.35, 0.65, 2) * R.CANVAS
    color = _contrasting_color(rng, kind)
    mask = R.glyph_mask(shown, font, size, cx, cy, rng.uniform(-15, 15), int(rng.integers(0, 4)))
    canvas = R.composite(canvas, mask, R.jitter_color(color, rng))
    col = (_pick(rng, COLOR_WORDS[color]) + " ") if rng.random() < 0.4 else ""
    style = ""
    if rng.random() < 0.25:
        style = " in " + _pick(rng, ["bold" if "Bold" in font else "regular", "serif" if "Serif" in font else
                                     "sans-serif" if "Mono" not in font else "monospace",
                                     "italic" if ("Oblique" in font or "Italic" in font) else "upright"]) + " type"
    if is_digit:
        word = NUMBER_WORDS[int(char)]
        cap = _pick(rng, [f"the digit {char}", f"the number {word}", f"the number {char}", f"{_a(col + char)}",
                          _a(f"{col}digit {char}"), f"the numeral {word}", _a(f"{col}{word}"), f"the digit {word}"])
    else:
        case = ("capital " if upper else "lowercase ") if rng.random() < 0.4 else ""
        cap = _pick(rng, [f"the letter {char}", _a(f"{col}{case}letter {char}"), f"the {case}letter {char}",
                          f"the character {char}", f"{_a(col + case + char)}"])
    if rng.random() < 0.2:
        cap += " " + _bg_phrase(rng, kind, bg_color)
    return canvas, _pick(rng, PREFIXES).format(cap + style), busy


def texture(rng) -> tuple[np.ndarray, str, bool]:
    pattern = _pick(rng, R.PATTERNS)
    c1 = _pick(rng, list(R.COLORS))
    c2 = _pick(rng, [c for c in R.COLORS if c != c1 and {c, c1} != {"black", "gray"}])
    period = rng.uniform(10, 26)
    canvas = R.two_tone(R.pattern_map(pattern, period, rng), R.jitter_color(c1, rng), R.jitter_color(c2, rng))
    _, _, nouns = PATTERN_WORDS[pattern]
    noun = _pick(rng, nouns)
    colors = f"{_pick(rng, COLOR_WORDS[c1])} and {_pick(rng, COLOR_WORDS[c2])}"
    cap = _pick(rng, [f"a {noun} texture", f"a {noun} pattern", f"{noun} in {colors}", f"a texture of {noun}",
                      f"a {colors} {noun} pattern", f"a background of {noun}", f"{noun}", f"a surface with {noun}"])
    return canvas, _pick(rng, PREFIXES[:5]).format(cap), False


def count(rng) -> tuple[np.ndarray, str, bool]:
    kind, bg_color, canvas, busy = _background(rng)
    n = int(rng.integers(2, 6))
    shape, color = _pick(rng, R.SHAPES), _contrasting_color(rng, kind)
    cells = rng.permutation(9)[:n]
    r = rng.uniform(10, 15)
    for c in cells:
        cx = (c % 3 + 0.5) * R.CANVAS / 3 + rng.uniform(-6, 6)
        cy = (c // 3 + 0.5) * R.CANVAS / 3 + rng.uniform(-6, 6)
        canvas = draw_object(rng, canvas, shape, color, None, r, cx, cy)
    plural = SHAPE_PLURAL[shape]
    num = _pick(rng, [NUMBER_WORDS[n], NUMBER_WORDS[n], str(n)])
    col = (_pick(rng, COLOR_WORDS[color]) + " ") if rng.random() < 0.6 else ""
    cap = _pick(rng, [f"{num} {col}{plural}", f"a group of {num} {col}{plural}", f"{num} small {col}{plural}",
                      f"exactly {num} {col}{plural}", f"several {col}{plural}"])
    return canvas, _pick(rng, PREFIXES).format(cap), busy


RELATIONS = {"left": ("to the left of", "right"), "right": ("to the right of", "left"),
             "above": ("above", "below"), "below": ("below", "above")}


def relation(rng) -> tuple[np.ndarray, str, bool]:
    kind, bg_color, canvas, busy = _background(rng)
    s1, s2 = rng.permutation(len(R.SHAPES))[:2]
    s1, s2 = R.SHAPES[s1], R.SHAPES[s2]
    c1 = _contrasting_color(rng, kind)
    c2 = _contrasting_color(rng, kind, exclude=(c1,))
    rel = _pick(rng, list(RELATIONS))
    r = rng.uniform(15, 22)
    a, b = rng.uniform(r + 2, R.CANVAS / 2 - 4), rng.uniform(R.CANVAS / 2 + 4, R.CANVAS - r - 2)
    o1, o2 = rng.uniform(r + 2, R.CANVAS - r - 2, 2)
    p1, p2 = {"left": ((a, o1), (b, o2)), "right": ((b, o1), (a, o2)),
              "above": ((o1, a), (o2, b)), "below": ((o1, b), (o2, a))}[rel]
    canvas = draw_object(rng, canvas, s1, c1, None, r, *p1)
    canvas = draw_object(rng, canvas, s2, c2, None, r, *p2)
    first, second = object_phrase(rng, s1, c1, None, None, False), object_phrase(rng, s2, c2, None, None, False)
    word, inverse = RELATIONS[rel]
    u = rng.random()
    if u < 0.45:
        cap = f"{first} {word} {second}"
    elif u < 0.8:
        cap = f"{second} {RELATIONS[inverse][0]} {first}"
    else:
        cap = f"{first} and {second}"
    return canvas, _pick(rng, PREFIXES).format(cap), busy


SCENES = ((single_object, 0.34), (glyph, 0.34), (texture, 0.12), (count, 0.10), (relation, 0.10))
_CUM = np.cumsum([w for _, w in SCENES])


# --- captions "v2": the same images, captions rephrased in richer language ---------------------------------
# v1 is the caption stream the shipped mini-clip was pretrained on, so it never changes. v2 rewrites each v1
# caption with a second generator ([seed, index, 2]), so that the images, and every downstream task, stay
# exactly those of v1: a framing from a larger set (CLIP's own prompt styles among them), synonyms for the
# words that carry no class, and the photo's real defects named (its blur, its noise, its uncaptioned
# strokes), which v1 never says.
CAPTIONS = ("v1", "v2")
FRAMES_V2 = [
    "a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "{}", "{}", "a rendering of {}",
    "a close-up of {}", "there is {} here", "a photograph of {}", "a snapshot of {}", "a sketch of {}",
    "a painting of {}", "an illustration of {}", "a cropped photo of {}", "a good photo of {}", "art of {}",
    "a graphic of {}", "a poster showing {}", "a screenshot of {}", "this is {}",
    "here we see {}", "the picture shows {}", "you can see {} in this image", "look at {}",
    "an example of {}", "a simple icon of {}", "a digital drawing of {}", "{} in a photo",
    "{}, photographed", "a clear view of {}", "a scan of {}",
]
# word -> the words that may replace it where it stands alone (the meaning stays; no class name is touched)
SYNONYMS_V2 = {
    "small": ["small", "tiny", "little", "compact"], "little": ["little", "small", "tiny"],
    "large": ["large", "big", "huge", "giant"], "big": ["big", "large", "huge"],
    "background": ["background", "backdrop", "ground"], "group": ["group", "set", "bunch", "collection"],
    "several": ["several", "some", "a few", "a number of"], "exactly": ["exactly", "precisely", "just"],
    "pattern": ["pattern", "design", "motif"], "texture": ["texture", "surface", "fabric"],
    "surface": ["surface", "material"], "hollow": ["hollow", "empty", "unfilled"],
    "outlined": ["outlined", "line-drawn"], "solid": ["solid", "filled"], "plain": ["plain", "simple"],
    "light": ["light", "pale", "soft"], "dark": ["dark", "deep", "dim"], "noisy": ["noisy", "grainy"],
    "textured": ["textured", "rough"], "mottled": ["mottled", "blotchy"], "type": ["type", "font", "print"],
    "character": ["character", "symbol", "sign"], "numeral": ["numeral", "figure"],
    "center": ["center", "middle"], "and": ["and", "together with", "next to", "along with"],
    "above": ["above", "over"], "below": ["below", "under", "beneath"],
}
DEFECTS_V2 = {"blur": ["blurry", "blurred", "out-of-focus", "soft-focus"],
              "noise": ["noisy", "grainy", "low-light"], "clutter": ["with a few scribbles", "with stray marks",
                                                                    "with some clutter", "with lines in the back"]}


def _rephrase(caption: str, rng: np.random.Generator, blur: float, noise: float, clutter: bool) -> str:
    body = caption
    for frame in sorted(dict.fromkeys(PREFIXES), key=len, reverse=True):  # the v1 framing, longest first
        head, _, tail = frame.partition("{}")
        if frame != "{}" and body.startswith(head) and body.endswith(tail):
            body = body[len(head):len(body) - len(tail)]
            break
    words = body.split(" ")
    body = " ".join(_pick(rng, SYNONYMS_V2[w]) if w in SYNONYMS_V2 and rng.random() < 0.5 else w for w in words)
    if clutter and rng.random() < 0.5:
        body += " " + _pick(rng, DEFECTS_V2["clutter"])
    defects = [w for kind, on in (("blur", blur > 0.3), ("noise", noise > 3.0)) if on
               for w in [_pick(rng, DEFECTS_V2[kind])]]
    if defects and rng.random() < 0.7:
        return _a(f"{' '.join(defects)} {_pick(rng, ['photo', 'picture', 'image', 'shot'])}") + f" of {body}"
    return _pick(rng, FRAMES_V2).format(body)


def pretraining_pair(seed: int, index: int, captions: str = "v1") -> tuple[Image.Image, str]:
    """The index-th (image, caption) pair of the pretraining stream for `seed`; ``captions`` is the caption
    style (`CAPTIONS`: "v1", mini-clip's, or "v2", the same image described in richer language)."""
    if captions not in CAPTIONS:
        raise ValueError(f"captions {captions!r}: not one of {', '.join(CAPTIONS)}")
    rng = np.random.default_rng([seed, index])
    scene = SCENES[int(np.searchsorted(_CUM, rng.random() * _CUM[-1]))][0]
    canvas, caption, busy = scene(rng)
    image = R.finish(canvas)
    blur = noise = 0.0
    if rng.random() < DEGRADED:
        blur, noise = rng.uniform(0.0, 0.6), rng.uniform(0.0, 6.0)
        image = R.add_noise(R.blur(image, blur), noise, rng)
    caption = caption.replace("  ", " ")
    if captions == "v2":
        caption = _rephrase(caption, np.random.default_rng([seed, index, 2]), blur, noise, busy)
    return image, caption


def iterate_pretraining_pairs(seed: int, start: int = 0, captions: str = "v1") -> Iterator[tuple[Image.Image, str]]:
    """The endless pretraining stream: (64x64 RGB PIL image, caption) pairs, in the pretraining style."""
    i = start
    while True:
        yield pretraining_pair(seed, i, captions)
        i += 1
