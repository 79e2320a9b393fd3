"""The `clipfit` command: a thin layer over the Python API (`clipfit.api`)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from . import __version__, defaults, plugins
from .defaults import IMAGE_CACHES, default_data_root
from .errors import ClipFitError

# The library (torch, open_clip) is imported inside the commands that use it, so that `--help` answers at once.


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"method option {text!r} is not key=value")
    if value.lower() in ("true", "false"):  # Python's True / False as well as JSON's
        return key, value.lower() == "true"
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        pass
    try:  # nan, inf: numbers JSON cannot spell, so that the method's own check names them
        return key, float(value)
    except ValueError:
        return key, value


class _Parser(argparse.ArgumentParser):
    """argparse's own errors as one line, like every other error of the tool, pointing to --help.

    On the top-level parser ``tables`` names the `clipfit table NAME` subcommands: `clipfit table` followed by
    anything else (run folders, or an option) is `clipfit table show ...`, so `clipfit table RUNS...` reads as
    the issue writes it and `clipfit table recipes` stays the recipes table."""

    tables: frozenset[str] = frozenset()

    def error(self, message: str):
        self.exit(2, f"clipfit: error: {message} (see `{self.prog} --help`)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if self.tables and len(args) > 1 and args[0] == "table" and args[1] not in self.tables | {"-h", "--help"}:
            args.insert(1, TABLE_SHOW)
        return super().parse_known_args(args, namespace)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has a real one (not None, False or an empty list)."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


DATA_ROOT_DEFAULT = f"default: $CLIPFIT_DATA, else {defaults.CACHE_ROOT}/data"
DATA_ROOT_HELP = f"the folder that holds the datasets ({DATA_ROOT_DEFAULT})"


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help=f"open_clip architecture, e.g. ViT-B-16, ViT-B-32, ViT-L-14, RN50, mini-clip "
        f"(`clipfit models` lists them; default: {defaults.MODEL}; with a Hugging Face folder as --pretrained, "
        "its config.json's, and --model may be left out)",
    )
    p.add_argument(
        "--pretrained",
        help=f"open_clip tag (openai, laion2b_s34b_b79k, metaclip_400m, ...), a checkpoint "
        f"file, a Hugging Face CLIPModel folder (config.json and model.safetensors or pytorch_model.bin), "
        f"'builtin' or 'none' (default: {defaults.PRETRAINED})",
    )


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train (or just evaluate, for zeroshot) a method over one or more seeds",
        formatter_class=_HelpFormatter,
        description="Every flag overrides the config file; unset flags keep the paper's defaults "
        "(the README's Defaults section). --dataset is required (or a --config that names it).",
    )
    p.add_argument("--config", type=Path, help="JSON run config (e.g. a run's config.json); flags override it")
    p.add_argument("--method", help=f"`clipfit methods` lists them (default: {defaults.METHOD})")
    p.add_argument(
        "--option",
        dest="options",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. regularizer=bias-mse (repeatable)",
    )
    p.add_argument("--beta", type=float, help="weight of the regulariser (default: the protocol's)")
    p.add_argument(
        "--type",
        choices=("vision", "vision-language"),
        help="the classifier of a method that offers the choice (the PEFT-for-CLIP study's --type; "
        "`clipfit methods` marks them): a linear head on the image features, or cosine against the class "
        "prompts (default: the method's paper's)",
    )
    _add_backbone_args(p)
    p.add_argument("--dataset", help="required: a registered dataset (see `clipfit data list`), 'imagefolder' or 'csv'")
    p.add_argument(
        "--data-root",
        help=f"the folder that holds the datasets, the folder itself for imagefolder, the file "
        f"for csv ({DATA_ROOT_DEFAULT})",
    )
    p.add_argument(
        "--cache-dir",
        help="where few-shot draws are cached (default: beside the dataset, or "
        f"{defaults.CACHE_ROOT}/fewshot when the dataset folder is read-only)",
    )
    p.add_argument(
        "--protocol",
        help="few-shot, base2new, cross-dataset, distribution-shift or vtab (`clipfit protocols` describes "
        f"them; default: {defaults.PROTOCOL})",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="DATASET",
        help="the datasets cross-dataset or distribution-shift also tests, each on its whole test set (default: "
        "the protocol's: ImageNet's ten CoOp targets, or its shifted test sets V2, Sketch, A and R)",
    )
    p.add_argument("--shots", type=int, help=f"images per class for training, 0: all (default: {defaults.SHOTS})")
    p.add_argument(
        "--seeds", type=int, nargs="+", help=f"one run per seed (default: {' '.join(map(str, defaults.SEEDS))})"
    )
    p.add_argument("--template", help="prompt template with {} for the class name (default: the dataset's)")
    p.add_argument(
        "--templates",
        metavar="NAME|FILE",
        help="a prompt ensemble, class features averaged over its templates as CLIP does: clip (each dataset's "
        "set from the CLIP paper, clip-imagenet for others), clip-imagenet (80), clip-imagenet-7, "
        "clip-<dataset>, or a file of templates, one a line; for zero-shot, the adapters' classifier and "
        "CLIPFit's, KgCoOp's and ProGrad's frozen targets (methods that learn their classifier refuse it; "
        "default: the single template)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="training epochs (default: the method's for the dataset; CLIPFit: 100, 10 for ImageNet and Food101)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        help="a budget of optimiser steps instead of epochs, for methods with a per-iteration schedule "
        "(CLIP-LoRA: 500 x shots)",
    )
    p.add_argument("--batch-size", type=int, help="training batch size (default: the method's; Dassl's 32)")
    p.add_argument("--lr", type=float, help="base learning rate (default: the method's; Dassl's 0.002)")
    p.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        help="random horizontal flips in training (default: yes, unless the dataset is not mirror-invariant)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="augment training images at all (random resized crops, flips); --no-augment trains on the evaluation "
        "transform (default: yes, except for --protocol vtab, as VTAB-1k's papers)",
    )
    p.add_argument(
        "--image-cache",
        choices=IMAGE_CACHES,
        help="decoded (default, exact): keep decoded full-resolution training images within --image-cache-mb; "
        "resized-approximate: keep them resized to the input size and crop from that (not the "
        "reference's augmentation); none: decode on every read",
    )
    p.add_argument(
        "--image-cache-mb",
        type=int,
        help=f"memory budget of the image cache in MiB (default: {defaults.IMAGE_CACHE_MB})",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default: auto: a GPU when there is one)")
    p.add_argument(
        "--precision",
        help="fp32 (default); bf16, or fp16 with loss scaling: autocast forward passes; "
        "fp16-reference: the CLIP's weights in fp16, as CoOp-family code trains. "
        "Every loss term is computed in fp32",
    )
    p.add_argument("--num-workers", type=int, help="data-loading processes (default: 0, load in the main process)")
    p.add_argument(
        "--decode",
        dest="check_images",
        action=argparse.BooleanOptionalAction,
        help=f"decode every image the run reads before training (default: when it reads at most "
        f"{defaults.CHECK_IMAGES_UP_TO:,})",
    )
    p.add_argument(
        "--out",
        help="run folder, one seedN sub-folder per seed (default: "
        "runs/<dataset>-<protocol>-<shots>shot-<method>-<model>-<8 hex digits of the setting>)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo seeds that already finished (default: reuse them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config_from_args(args):
    from . import api
    from .config import RunConfig

    config = RunConfig.from_file(args.config) if args.config else None
    if args.dataset is None and config is None:
        raise ClipFitError(
            "--dataset is required (a name from `clipfit data list`, 'imagefolder' or 'csv'), "
            "or a --config that names one"
        )
    config = config or RunConfig()
    from .hf_checkpoint import HF_MODEL, hf_folder

    top = {
        "method": args.method,
        # A Hugging Face folder's config.json names its architecture, so --model may be left out with one.
        "model": args.model or (HF_MODEL if hf_folder(args.pretrained) is not None else None),
        "pretrained": args.pretrained,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "protocol": args.protocol,
        "targets": args.targets,
        "shots": args.shots,
        "seeds": args.seeds,
        "template": args.template,
        "templates": args.templates,
        "device": args.device,
        "num_workers": args.num_workers,
        "out": args.out,
        "hflip": args.hflip,
        "augment": args.augment,
        "image_cache": args.image_cache,
        "image_cache_mb": args.image_cache_mb,
        "cache_dir": args.cache_dir,
        "check_images": args.check_images,
        "precision": args.precision,
    }
    optim = {"epochs": args.epochs, "iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr}
    options = dict(config.method_options)
    given = [key for key, _ in args.options]
    twice = sorted({key for key in given if given.count(key) > 1})
    if twice:
        raise ClipFitError(f"--option {twice[0]} is given more than once")
    options.update(dict(args.options))
    from .methods import get_method, method_regime

    method = get_method(args.method or config.method)
    import dataclasses

    fields = sorted(f.name for f in dataclasses.fields(method.config_class))
    # Shortcuts for one option (--beta: CLIPFit's regulariser weight, --type: the study's head), each taken
    # only by the methods that name it in `Method.cli_shortcuts`.
    for flag, value in (("beta", args.beta if method_regime(method.name).trains else None), ("type", args.type)):
        if value is None:
            continue
        if flag == "beta" and "beta" in fields and flag not in method.cli_shortcuts:
            raise ClipFitError(
                f"--beta is the weight of CLIPFit's regulariser; method {method.name!r} has no regulariser "
                f"(its beta is another quantity: give it as --option beta=VALUE)"
            )
        if flag not in method.cli_shortcuts:
            raise ClipFitError(
                f"--{flag} does not apply to method {method.name!r}, which has no {flag} option "
                f"(its options, for --option key=value: {', '.join(fields) or 'none'})"
            )
        if flag in options and options[flag] != value and flag in dict(args.options):
            raise ClipFitError(f"--{flag} {value} and --option {flag}={options[flag]} disagree; give one")
        options[flag] = value
    return api.replace_config(
        config,
        method_options=options,
        optim={k: v for k, v in optim.items() if v is not None},
        **{k: v for k, v in top.items() if v is not None},
    )


# Flags that only mean something to a method that trains.
TRAINING_FLAGS = (
    "shots", "epochs", "iterations", "batch_size", "lr", "beta", "hflip", "augment", "image_cache", "image_cache_mb"
)


def cmd_train(args) -> None:
    from . import api
    from .methods import method_regime
    from .report import print_summary

    config = _config_from_args(args)
    try:
        regime = method_regime(config.method, config.method_options)
    except ClipFitError:
        regime = None  # a bad option: the run's own checks name it, with the field at fault
    if regime is not None and not regime.trains:
        ignored = [f"--{name.replace('_', '-')}" for name in TRAINING_FLAGS if getattr(args, name) is not None]
        if ignored:
            print(f"clipfit: note: {config.method} does not train; ignoring {', '.join(ignored)}", file=sys.stderr)
    elif regime is not None and regime.optimise is None:
        ignored = [f"--{name}" for name in ("epochs", "iterations", "lr") if getattr(args, name) is not None]
        if ignored:
            print(
                f"clipfit: note: {config.method} is fitted in one pass, without an optimiser; ignoring "
                f"{', '.join(ignored)}",
                file=sys.stderr,
            )
    summary = api.run(config, progress=not args.no_progress, overwrite=args.overwrite)
    print_summary(summary)
    print(f"results: {Path(summary['out']) / 'summary.json'}")


def cmd_params(args) -> None:
    from . import api
    from .report import print_params

    if args.method != "all":
        print_params(args.method, args.model, api.count_parameters(args.method, args.model))
        return
    from .report import print_all_params

    notes = api.model_notes(args.model)  # an unknown model fails here, once
    counts = {}
    for name in api.list_methods():
        try:
            counts[name] = {
                protocol: sum(api.count_parameters(name, args.model, protocol)["groups"].values())
                for protocol in ("few-shot", "base2new")
            }
        except ClipFitError as err:  # e.g. MaPLe on a ResNet: no image transformer to prompt
            counts[name] = str(err)
    print_all_params(args.model, counts, notes)


def cmd_methods(args) -> None:
    from . import api
    from .methods import get_method

    for name, doc in api.list_methods().items():
        flags = " ".join(f"--{flag}" for flag in get_method(name).cli_shortcuts)
        print(f"{name:20s} {doc}" + (f" [{flags}]" if flags else ""))


def cmd_models(args) -> None:
    from . import api

    models = api.list_models()
    if args.model and args.model not in models:
        from .backbone import check_model_name

        check_model_name(args.model)  # names close matches
    for model, tags in models.items():
        if args.model and args.model != model:
            continue
        listed = (
            ", ".join(f"{tag}{' [on disk]' if on_disk else ''}" for tag, on_disk in tags.items())
            or "(no pretrained tags)"
        )
        print(f"{model:32s} {listed}")


def cmd_study(args) -> None:
    from . import api
    from .report import print_summary
    from .study import StudyArgs, study_config

    study = StudyArgs(args.data, args.backbone, args.model, args.type, args.shots, tuple(args.seeds))
    fields = {"data_root": args.data_root, "out": args.out, "device": args.device, "precision": args.precision}
    config = study_config(study, **{k: v for k, v in fields.items() if v is not None})
    summary = api.run(config, progress=not args.no_progress)
    print_summary(summary)
    print(f"results: {Path(summary['out']) / 'summary.json'}")


def cmd_protocols(args) -> None:
    from .protocols import PROTOCOLS

    for name, protocol in PROTOCOLS.items():
        print(f"{name:20s} {protocol.description}")


def cmd_eval(args) -> None:
    from . import api

    metrics = api.evaluate_run(
        args.run,
        dataset=args.dataset,
        data_root=args.data_root,
        split=args.split,
        template=args.template,
        templates=args.templates,
        device=args.device,
        progress=not args.no_progress,
    )
    for key, value in metrics.items():
        if key != "test_sets":  # what each metric is evaluated on: recorded in a run folder, not printed
            print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")


def cmd_predict(args) -> None:
    from . import api
    from .report import print_predictions

    if args.top_k < 1:
        raise ClipFitError(f"--top-k must be a whole number >= 1, got {args.top_k}")
    if (args.run is None) == (args.export is None):
        raise ClipFitError("give one of --run (a seed folder) or --export (a file written by clipfit export)")
    if args.export is not None:
        print_predictions(api.predict_exported(args.export, args.images, top_k=args.top_k, device=args.device))
    else:
        print_predictions(api.predict(args.run, args.images, top_k=args.top_k, device=args.device))


def cmd_export(args) -> None:
    from . import api

    meta = api.export(args.run, args.out)
    print(f"wrote {args.out}: {meta['method']} on {meta['architecture']}, form {meta['form']!r} (see README, Export)")


def cmd_data_check(args) -> None:
    from . import api

    report = api.check_dataset(args.dataset, args.data_root or str(default_data_root()), decode=args.decode)
    print(report)
    if not report.ok:
        sys.exit(1)


def cmd_data_list(args) -> None:
    from . import api

    datasets, aliases = api.list_datasets(), api.dataset_aliases()
    width = max(map(len, [*datasets, *aliases]), default=0)
    for name, title in datasets.items():
        print(f"{name:{width}s} {title}")
    if aliases:
        print("\naliases (another name for a dataset, e.g. the PEFT-for-CLIP study's):")
        for alias, name in aliases.items():
            print(f"{alias:{width}s} = {name}")


def cmd_data_export_vtab(args) -> None:
    from .data.tfds import TASKS, ExportedAlready, export_vtab, tasks_found

    out = args.out or str(default_data_root())
    tasks = tasks_found(args.tfds_dir) if args.task == "all" else [args.task]
    if not tasks:
        raise ClipFitError(f"no VTAB task's TFDS folder under {args.tfds_dir} (builders: "
                           f"{', '.join(sorted({t.builder for t in TASKS.values()}))})")
    for task in tasks:
        try:
            r = export_vtab(args.tfds_dir, task, out)
        except ExportedAlready as err:
            if args.task != "all":
                raise
            print(f"{task}: skipped, {err}")  # 'all' again after adding a builder exports only the new ones
            continue
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
        print(f"{r.task}: wrote {r.folder} ({counts}) from {r.source}")


def _recipes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--readme", type=Path, help="write the table into this README between its recipes markers")


def cmd_table_recipes(args) -> None:
    from .methods import METHODS
    from .readme import check_markers, update_readme
    from .recipes import recipe_table_markdown

    if args.readme:
        check_markers(args.readme, [RECIPES_TABLE])
    markdown = recipe_table_markdown(list(METHODS))
    print(markdown)
    if args.readme:
        update_readme(args.readme, markdown, RECIPES_TABLE)
        print(f"updated {args.readme}")


RECIPES_TABLE = "recipes"
plugins.register_command(
    plugins.Command(
        "recipes",
        "every method's recipe (optimiser, schedule length, options) by protocol, dataset and shots, "
        "with the source of each number, from src/clipfit/recipes/*.yaml",
        _recipes_arguments,
        cmd_table_recipes,
        parent="table",
    )
)


def _table_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUNS",
                   help="run folders (holding summary.json or seedN/metrics.json), or folders searched for them")
    p.add_argument("--kind", action="append", metavar="KIND",
                   help="base2new, few-shot, cross-dataset, distribution-shift, vtab or efficiency; repeat it for "
                   "several (default: one table per protocol the runs have)")
    p.add_argument("--format", default="md", choices=("md", "csv"),
                   help="Markdown tables with footnotes, or CSV with one row per cell")
    p.add_argument("--out", type=Path, help="write to this file (atomically) instead of printing")
    p.add_argument("--seeds", type=int, metavar="N", help="mark cells with fewer than N seeds (default: fewer than "
                   "the most any cell of the table has)")
    p.add_argument("--compare", metavar="NAME|FILE", help="print a published table set beside ours, with the "
                   "difference: clipfit-paper (CLIPFit's Tables 1, 2, 3, 7, 9, 10), or a YAML file in its format")


def cmd_table_show(args) -> None:
    from .files import atomic_write_text
    from .tables import render_table

    text = render_table(args.runs, kind=args.kind, fmt=args.format, seeds=args.seeds, compare=args.compare)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")


TABLE_SHOW = "show"
plugins.register_command(
    plugins.Command(
        TABLE_SHOW,
        "finished runs in the papers' table formats (base-to-new, few-shot, cross-dataset, distribution "
        "shift, VTAB-1k, efficiency), mean ± std over seeds; also written `clipfit table RUNS...`",
        _table_show_arguments,
        cmd_table_show,
        parent="table",
    )
)


def build_parser() -> argparse.ArgumentParser:
    plugins.load_commands()  # their commands (the mini world's demo and tables) join the built-in ones
    parser = _Parser(prog="clipfit", description="Parameter-efficient fine-tuning of CLIP.")
    parser.add_argument("--version", action="version", version=f"clipfit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="the command (each has --help)")

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    # A plugin's commands (the mini world's demo first), then `clipfit table NAME` for every registered table.
    commands = sorted(plugins.COMMANDS.values(), key=lambda command: command.parent is not None)
    tables = None
    for command in commands:
        if command.parent == "table" and tables is None:
            p = add("table", help="tables of finished runs in the papers' formats (`clipfit table RUNS...`), "
                    "or regenerate a table the README quotes",
                    description="`clipfit table RUNS...` is `clipfit table show RUNS...`: any first word that "
                    "is not one of the tables below is read as a run folder")
            tables = p.add_subparsers(dest="table", metavar="TABLE", required=True, help="which table")
        target = tables if command.parent == "table" else sub
        c = target.add_parser(command.name, formatter_class=_HelpFormatter, help=command.help)
        command.add_arguments(c)
        c.set_defaults(func=command.run)
    if tables is not None:
        parser.tables = frozenset(tables.choices)

    p = add("params", help="count a method's trainable parameters on a backbone (no weights needed)")
    p.add_argument(
        "--method", default=defaults.METHOD, help="`clipfit methods` lists them; 'all': every one, in one table"
    )
    p.add_argument("--model", default=defaults.MODEL,
                   help="an open_clip architecture (`clipfit models` lists them), or a Hugging Face CLIPModel folder")
    p.set_defaults(func=cmd_params)

    p = add("methods", help="the registered methods")
    p.set_defaults(func=cmd_methods)

    p = add(
        "models",
        help="open_clip architectures and their pretrained tags, marked [on disk] where the weights are cached",
    )
    p.add_argument("--model", help="only this architecture")
    p.set_defaults(func=cmd_models)

    _train_parser(sub)
    sub.choices["train"].set_defaults(func=cmd_train)

    p = add(
        "study",
        help="the PEFT-for-CLIP study's command line (python train.py --data ... --backbone ... --model ...)",
        description="The study's train.py arguments, as its README gives them, run as `clipfit train --protocol "
        "vtab` with its names translated (README: 'The PEFT-for-CLIP study's command line').",
    )
    p.add_argument("--data", required=True, help="the task, as the study names it (vtab-cifar100, vtba-dtd, ...)")
    p.add_argument(
        "--backbone", default="ViT-B16", help="ViT-B32, ViT-B16, ViT-L14, MetaCLIP-B32-400M, ... (either case)"
    )
    p.add_argument(
        "--model", default="VPT-CLIP-Shallow", help="the strategy: CLIP-Adapter, VPT-CLIP-Shallow, VPT-CLIP-Deep"
    )
    p.add_argument("--type", default="vision", choices=("vision", "vision-language"), help="the classifier")
    p.add_argument("--shots", type=int, default=16, help="images per class, -1: the whole training list")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0],
                   help="the seeds (the study's README says --seeds, its code --seed; default 0)")
    p.add_argument("--data-root", help=DATA_ROOT_HELP)
    p.add_argument("--out", help="run folder (default: runs/<task>-vtab-<shots>shot-<method>-<model>-<hex>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or fp16-reference (the study: fp16 autocast)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)

    p = add("protocols", help="the evaluation protocols")
    p.set_defaults(func=cmd_protocols)

    p = add("eval", help="evaluate a finished run (its own test sets, or another dataset)")
    p.add_argument("--run", required=True, type=Path, help="a seed folder, e.g. runs/eurosat-b2n/seed1")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the run's")
    p.add_argument("--data-root", help="with --dataset: " + DATA_ROOT_HELP)
    p.add_argument(
        "--split",
        choices=["all", "base", "new"],
        help="which classes (default: the run's protocol, or all for another dataset)",
    )
    p.add_argument("--template", help="prompt template with {} (default: the run's, or the other dataset's)")
    p.add_argument(
        "--templates",
        metavar="NAME|FILE",
        help="a prompt ensemble to classify with instead of the run's (a named set such as clip or "
        "clip-imagenet, or a file of templates; default: the run's, where clip follows the dataset evaluated)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = add("predict", help="classify image files with a tuned run")
    p.add_argument("--run", type=Path, help="a seed folder, e.g. runs/eurosat-b2n/seed1")
    p.add_argument("--export", type=Path, help="or a file written by `clipfit export`")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=cmd_predict)

    p = add("export", help="write a tuned run as one safetensors file that plain open_clip loads")
    p.add_argument("run", type=Path, help="a finished seed folder, e.g. runs/eurosat-b2n/seed1")
    p.add_argument("--out", required=True, type=Path, help="the file to write (.safetensors)")
    p.set_defaults(func=cmd_export)

    p = add("data", help="datasets: list them, check what is on disk")
    data_sub = p.add_subparsers(dest="data_command", metavar="check|list|export-vtab", required=True,
                                     help="check, list or export-vtab")
    c = data_sub.add_parser(
        "check",
        formatter_class=_HelpFormatter,
        help="report what is present and, for what is missing, the exact path expected",
    )
    c.add_argument("--dataset", required=True, help="a name from `clipfit data list`, 'imagefolder' or 'csv'")
    c.add_argument("--data-root", help=DATA_ROOT_HELP)
    c.add_argument(
        "--decode",
        action=argparse.BooleanOptionalAction,
        help=f"decode every image and report each unreadable one (default: when the dataset has at most "
        f"{defaults.CHECK_IMAGES_UP_TO:,})",
    )
    c.set_defaults(func=cmd_data_check)
    c = data_sub.add_parser("list", help="the registered datasets")
    c.set_defaults(func=cmd_data_list)
    c = data_sub.add_parser(
        "export-vtab",
        formatter_class=_HelpFormatter,
        help="write VTAB-1k's image lists from TFDS-prepared folders (no TensorFlow needed)",
    )
    c.add_argument("--tfds-dir", required=True, help="the TFDS data_dir (<dir>/<builder>/<config?>/<version>/)")
    c.add_argument("--task", required=True, help="a VTAB-1k task (vtab-<task>, its name or an alias), or 'all' "
                   "for every task whose TFDS folder is found")
    c.add_argument("--out", help=f"the data root to write vtab-1k/<task folder>/ under ({DATA_ROOT_DEFAULT})")
    c.set_defaults(func=cmd_data_export_vtab)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"clipfit: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    # Class names and paths are printed whatever the terminal's encoding: what it cannot show is escaped.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning  # one line a warning, not Python's file:line and source
    try:
        args.func(args)
    except ClipFitError as err:
        print(f"clipfit: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # a full or read-only disk, a folder where a file should be: say which file
        where = f" ({err.filename})" if err.filename and str(err.filename) not in str(err) else ""
        print(f"clipfit: error: {err}{where}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("clipfit: interrupted; finished seeds are kept and a rerun resumes from them", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
