"""The PEFT-for-CLIP study's command line (Andy-LZH/peft4clip@8c00629 `train.py`), mapped onto ours.

    clipfit study --data vtab-cifar100 --backbone ViT-B16 --model VPT-CLIP-Shallow --type vision --shots 16 --seeds 1

is `clipfit train --protocol vtab` with the study's names translated: its backbone names (`src/utils/utils.py`:
OpenAI's CLIP through `clip.load`, MetaCLIP through open_clip with the tags `metaclip_400m` and
`metaclip_fullcc`), its strategy names, and its task names (`clipfit.data` registers them as aliases of
`vtab-<task>`, the README's typos included). Its per-task recipes (N, lr, weight decay, epochs) are the
methods' recipe files (`recipes/vpt.yaml`, `recipes/clip_adapter.yaml`) for the VTAB-1k tasks. The study's
README spells the seed flag `--seeds`, its code `--seed` (default 0): both are accepted. `--shots -1`
(the study's "the whole training pool") is our 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import data
from .config import RunConfig
from .errors import ClipFitError

# The study's backbone names (either case), as (open_clip architecture, pretrained tag). OpenAI's weights
# load under the plain architecture names (open_clip switches them to QuickGELU); MetaCLIP's are
# QuickGELU models, the -quickgelu configs. "2.5B" is MetaCLIP's full CommonCrawl curation ("fullcc").
BACKBONES: dict[str, tuple[str, str]] = {
    "ViT-B32": ("ViT-B-32", "openai"),
    "ViT-B16": ("ViT-B-16", "openai"),
    "ViT-L14": ("ViT-L-14", "openai"),
    "MetaCLIP-B32-400M": ("ViT-B-32-quickgelu", "metaclip_400m"),
    "MetaCLIP-B32-2.5B": ("ViT-B-32-quickgelu", "metaclip_fullcc"),
    "MetaCLIP-B16-400M": ("ViT-B-16-quickgelu", "metaclip_400m"),
    "MetaCLIP-B16-2.5B": ("ViT-B-16-quickgelu", "metaclip_fullcc"),
    "MetaCLIP-L14-400M": ("ViT-L-14-quickgelu", "metaclip_400m"),
    "MetaCLIP-L14-2.5B": ("ViT-L-14-quickgelu", "metaclip_fullcc"),
}

# The study's strategies (`--model`), as our registered methods.
STRATEGIES: dict[str, str] = {
    "CLIP-Adapter": "clip-adapter",
    "VPT-CLIP-Shallow": "vpt-shallow",
    "VPT-CLIP-Deep": "vpt-deep",
}


def _lookup(table: dict, name: str, what: str, flag: str):
    by_lower = {key.lower(): key for key in table}
    if name.lower() not in by_lower:
        raise ClipFitError(f"{flag} {name}: not one of the study's {what} ({', '.join(table)}, in either case)")
    return table[by_lower[name.lower()]]


@dataclass
class StudyArgs:
    """The study's `train.py` arguments. ``seeds``: the study's seeds (its code's one `--seed`)."""

    data: str
    backbone: str = "ViT-B16"
    model: str = "VPT-CLIP-Shallow"
    type: str = "vision"
    shots: int = 16
    seeds: tuple[int, ...] = (0,)


def study_config(args: StudyArgs, **fields) -> RunConfig:
    """The `RunConfig` of a study command: protocol vtab on the task, the backbone and strategy translated,
    the study's classifier type as the method's option; ``fields``: further config fields (data_root, out,
    device, precision). `ClipFitError` naming the argument at fault."""
    arch, tag = _lookup(BACKBONES, args.backbone, "backbones", "--backbone")
    method = _lookup(STRATEGIES, args.model, "strategies", "--model")
    task = data.get_spec(args.data).name  # an alias (vtba-dtd) resolves to its task (vtab-dtd)
    if isinstance(args.shots, bool) or not isinstance(args.shots, int) or args.shots < -1 or args.shots == 0:
        raise ClipFitError(f"--shots must be a whole number >= 1, or -1 for the whole training pool; got {args.shots}")
    return RunConfig(
        method=method,
        method_options={"type": args.type},
        model=arch,
        pretrained=tag,
        dataset=task,
        protocol="vtab",
        shots=0 if args.shots == -1 else args.shots,
        seeds=list(args.seeds),
        **fields,
    )
