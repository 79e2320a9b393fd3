"""Prompt ensembles (`--templates`): the CLIP paper's named template sets, and files of templates.

CLIP classifies zero-shot with an ensemble of prompts (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", ICML 2021, Sec. 3.1.4; openai/CLIP @d05afc4
`notebooks/Prompt_Engineering_for_ImageNet.ipynb`, `zeroshot_classifier`): each template's prompts are
encoded and L2-normalised, the features averaged over the templates and L2-normalised again. This module
holds the sets as data and reads template files; it loads no torch (the averaging is
`clipfit.methods.base.average_over_templates`; which methods take an ensemble, and for what, is each
method's `templates_role`).

Named sets:

- ``clip-imagenet``: CLIP's 80 ImageNet templates, read at run time from open_clip
  (`open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`, the notebook's list).
- ``clip-imagenet-7``: the 7 of them the notebook's sequential forward selection kept (open_clip's
  `SIMPLE_IMAGENET_TEMPLATES`), the ensemble Tip-Adapter's code classifies ImageNet with.
- ``clip-<dataset>`` for the ten CoOp datasets CLIP's Table 9 shares (`CLIP_DATASET_TEMPLATES`): the
  templates openai/CLIP @d05afc4 `data/prompts.md` lists for each.
- ``clip``: the set of whichever dataset is classified (``clip-<dataset>``), ``clip-imagenet`` for any
  other (ImageNet and its variants, the mini world's tasks, imagefolder, csv); handy for cross-dataset
  evaluation, where every target gets its own set.

A file holds one template a line, UTF-8; blank lines and lines starting with ``#`` are skipped; each
template is checked as ``--template`` is (`clipfit.config.check_template`); a bad line is one error
naming ``file:line``. A run records a file's templates themselves (`resolve_templates`), so editing the
file makes another setting, and the run folder alone re-runs it.
"""

from __future__ import annotations

from pathlib import Path

from .config import check_template
from .errors import ClipFitError

CLIP = "clip"  # each dataset's own CLIP set, clip-imagenet for the others
IMAGENET = "clip-imagenet"
IMAGENET_7 = "clip-imagenet-7"

# openai/CLIP @d05afc4 `data/prompts.md`: the templates of each CoOp dataset (by our registry name), as
# listed under its section there (named in the comment, with the count).
CLIP_DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    "caltech101": (  # Caltech101, 34
        "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.",
        "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.", "a embroidered {}.", "a cartoon {}.",
        "a {} in a video game.", "a plushie {}.", "a origami {}.", "art of a {}.", "graffiti of a {}.",
        "a drawing of a {}.", "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}.",
        "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
        "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.", "the {} in a video game.",
        "the plushie {}.", "the origami {}.", "art of the {}.", "graffiti of the {}.", "a drawing of the {}.",
        "a doodle of the {}.",
    ),
    "oxford_pets": ("a photo of a {}, a type of pet.",),  # OxfordPets, 1
    "stanford_cars": (  # StanfordCars, 8
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
        "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}.",
    ),
    "oxford_flowers": ("a photo of a {}, a type of flower.",),  # Flowers102, 1
    "food101": ("a photo of {}, a type of food.",),  # Food101, 1
    "fgvc_aircraft": (  # FGVCAircraft, 2
        "a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft.",
    ),
    "sun397": (  # SUN397, 2
        "a photo of a {}.", "a photo of the {}.",
    ),
    "dtd": (  # DescribableTextures, 8
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.", "a photo of a {} object.",
        "a photo of the {} texture.", "a photo of the {} pattern.", "a photo of the {} thing.",
        "a photo of the {} object.",
    ),
    "eurosat": (  # EuroSAT, 3
        "a centered satellite photo of {}.", "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ),
    "ucf101": (  # UCF101, 48
        "a photo of a person {}.", "a video of a person {}.", "a example of a person {}.",
        "a demonstration of a person {}.", "a photo of the person {}.", "a video of the person {}.",
        "a example of the person {}.", "a demonstration of the person {}.", "a photo of a person using {}.",
        "a video of a person using {}.", "a example of a person using {}.", "a demonstration of a person using {}.",
        "a photo of the person using {}.", "a video of the person using {}.", "a example of the person using {}.",
        "a demonstration of the person using {}.", "a photo of a person doing {}.", "a video of a person doing {}.",
        "a example of a person doing {}.", "a demonstration of a person doing {}.",
        "a photo of the person doing {}.", "a video of the person doing {}.", "a example of the person doing {}.",
        "a demonstration of the person doing {}.", "a photo of a person during {}.",
        "a video of a person during {}.", "a example of a person during {}.",
        "a demonstration of a person during {}.", "a photo of the person during {}.",
        "a video of the person during {}.", "a example of the person during {}.",
        "a demonstration of the person during {}.", "a photo of a person performing {}.",
        "a video of a person performing {}.", "a example of a person performing {}.",
        "a demonstration of a person performing {}.", "a photo of the person performing {}.",
        "a video of the person performing {}.", "a example of the person performing {}.",
        "a demonstration of the person performing {}.", "a photo of a person practicing {}.",
        "a video of a person practicing {}.", "a example of a person practicing {}.",
        "a demonstration of a person practicing {}.", "a photo of the person practicing {}.",
        "a video of the person practicing {}.", "a example of the person practicing {}.",
        "a demonstration of the person practicing {}.",
    ),
}


def set_names() -> list[str]:
    """Every named set: ``clip``, ``clip-imagenet``, ``clip-imagenet-7``, then ``clip-<dataset>``."""
    return [CLIP, IMAGENET, IMAGENET_7, *(f"{CLIP}-{dataset}" for dataset in CLIP_DATASET_TEMPLATES)]


def _names_text() -> str:
    return (f"{CLIP}, {IMAGENET}, {IMAGENET_7} or {CLIP}-<dataset> for "
            f"{', '.join(CLIP_DATASET_TEMPLATES)}")


def named_set(name: str, dataset: str | None = None) -> list[str]:
    """The templates of the named set ``name`` (`set_names`); ``clip`` takes the ``dataset`` classified
    (a registry name) and falls back to ``clip-imagenet``. The ImageNet sets come from open_clip (which
    imports torch). `ClipFitError` for a name that is no set."""
    if name == CLIP:
        name = f"{CLIP}-{dataset}" if dataset in CLIP_DATASET_TEMPLATES else IMAGENET
    if name in (IMAGENET, IMAGENET_7):
        from open_clip import zero_shot_metadata

        # Each is a function of the class name: given "{}", it returns the template itself.
        source = (zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES if name == IMAGENET
                  else zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES)
        templates = [template("{}") for template in source]
        for template in templates:
            check_template(template)
        return templates
    dataset_set = name[len(CLIP) + 1:] if name.startswith(f"{CLIP}-") else None
    if dataset_set not in CLIP_DATASET_TEMPLATES:
        raise ClipFitError(f"templates {name!r} is no named set; the sets are {_names_text()}")
    return list(CLIP_DATASET_TEMPLATES[dataset_set])


def read_templates_file(path: str | Path) -> list[str]:
    """The templates of a file: one a line, UTF-8 (a byte-order mark is allowed), surrounding blanks
    stripped, blank lines and lines starting with ``#`` skipped. `ClipFitError` in one line naming
    ``file:line`` for a line that is no template (`check_template`), repeats an earlier one, or is not
    UTF-8, and naming the file when it is missing, a folder, unreadable or holds no template."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ClipFitError(f"templates {path}: is a folder; give a file of templates, one a line")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ClipFitError(f"templates file not found: {path}") from None
    except OSError as err:
        raise ClipFitError(f"templates {path}: cannot be read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        byte = raw[err.start]
        raise ClipFitError(f"{path}:{line}: not UTF-8 text (byte {byte:#04x}); save the file as UTF-8") from None
    templates: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        template = line.strip()
        if not template or template.startswith("#"):
            continue
        try:
            check_template(template)
        except ClipFitError as err:
            raise ClipFitError(f"{path}:{number}: {err}") from None
        if template in seen:
            raise ClipFitError(f"{path}:{number}: repeats the template of line {seen[template]} ({template!r}), "
                               "which would count twice in the average")
        seen[template] = number
        templates.append(template)
    if not templates:
        raise ClipFitError(f"templates {path}: holds no template (every line is blank or a # comment)")
    return templates


def check_templates(value: str | list[str]) -> None:
    """A ``templates`` setting: a named set, an existing file of templates (read and checked), or a
    non-empty list of templates (a resolved run's record of a file), none repeated. `ClipFitError` in one
    line otherwise."""
    if isinstance(value, str):
        if value in set_names():
            return
        path = Path(value).expanduser()
        if value.strip() and (path.is_file() or path.is_dir()):
            read_templates_file(path)
            return
        hint = "; a single template goes to --template" if "{}" in value else ""
        raise ClipFitError(f"templates must be a named set ({_names_text()}) or a file of templates, one a "
                           f"line; {value!r} is neither (no such file){hint}")
    if not value:
        raise ClipFitError("templates must hold at least one template, got an empty list")
    for index, template in enumerate(value):
        try:
            check_template(template)
        except ClipFitError as err:
            raise ClipFitError(f"templates[{index}]: {err}") from None
        if value.index(template) != index:
            raise ClipFitError(f"templates[{index}] repeats templates[{value.index(template)}] ({template!r}), "
                               "which would count twice in the average")


def resolve_templates(value: str | list[str] | None) -> str | list[str] | None:
    """What a run records: a named set by its name (``clip`` stays a name: it depends on the dataset
    classified), a file by its templates (so that editing the file changes the run's identity), a list
    as it is; None stays None."""
    if value is None or isinstance(value, list) or value in set_names():
        return value
    return read_templates_file(value)


def templates_for(value: str | list[str] | None, dataset: str) -> list[str] | None:
    """The templates a ``templates`` setting gives when ``dataset`` (a registry name) is classified;
    None for none (the single template)."""
    if value is None:
        return None
    if isinstance(value, list):
        return list(value)
    if value in set_names():
        return named_set(value, dataset)
    return read_templates_file(value)
