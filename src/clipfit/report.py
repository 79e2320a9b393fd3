"""Console tables: parameter counts, the run summary, predictions."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()

COLUMN_TITLES = {"accuracy": "Accuracy", "base": "Base", "new": "New", "hm": "HM", "average": "Average"}


def column_title(column: str) -> str:
    """A metric's column title: the papers' (Base, HM, Average), or a tested dataset's title (EuroSAT)."""
    from . import data

    if column in COLUMN_TITLES:
        return COLUMN_TITLES[column]
    spec = data.DATASETS.get(column)
    return spec.title or column if spec is not None else column


def print_params(method: str, model: str, counts: dict) -> None:
    console.print(f"{method} on {model}: trainable parameters", style="bold")  # a table title would wrap mid-phrase
    table = Table()
    table.add_column("group")
    table.add_column("parameters", justify="right")
    for group, n in counts["groups"].items():
        table.add_row(group, f"{n:,}")
    table.add_row("total", f"{sum(counts['groups'].values()):,}", style="bold")
    console.print(table)
    for note in counts["notes"]:
        console.print(f"note: {note}")


def print_all_params(model: str, counts: dict[str, dict[str, int] | str], notes: list[str] = ()) -> None:
    """One row per method: its trainable parameters with its few-shot and base-to-new defaults, or "-" and
    below the table the one-line reason it cannot apply; then ``notes`` on the backbone (every method's)."""
    console.print(f"trainable parameters on {model}, with each method's defaults", style="bold")
    table = Table()
    table.add_column("method")
    table.add_column("few-shot", justify="right")
    table.add_column("base-to-new", justify="right")
    for method, count in counts.items():
        if isinstance(count, str):
            table.add_row(method, "-", "-")
        else:
            table.add_row(method, f"{count['few-shot']:,}", f"{count['base2new']:,}")
    console.print(table)
    for method, count in counts.items():
        if isinstance(count, str):
            console.print(f"note: {method}: {count}")
    for note in notes:
        console.print(f"note: {note}")


def summary_columns(summary: dict) -> list[str]:
    return list(summary["mean"])


def print_summary(summary: dict) -> None:
    columns = summary_columns(summary)
    # A line of its own, not a table title (which would wrap mid-phrase).
    console.print(f"{summary['method']} | {summary['model']} ({summary['pretrained']}) | {summary['dataset']} | "
                  f"{summary['protocol']} | {summary['shots']} shots", style="bold")
    table = Table()
    table.add_column("seed")
    for column in columns:
        table.add_column(column_title(column), justify="right")
    for metrics in summary["per_seed"]:
        table.add_row(str(metrics["seed"]), *(f"{metrics[c]:.2f}" for c in columns))
    table.add_row("mean ± std", *(f"{summary['mean'][c]:.2f} ± {summary['std'][c]:.2f}" for c in columns), style="bold")
    console.print(table)
    if summary.get("targets"):
        console.print(f"Average is the mean over the {len(summary['targets'])} target(s); the trained dataset "
                      f"({summary['source']}) is not in it")
    for column in summary.get("derived_from_means", []):
        console.print(f"{column_title(column)} in the mean row is computed from the mean accuracies "
                      "(the papers' average: HM of the mean Base and the mean New); "
                      "± is the std of the per-seed values")


def print_predictions(predictions: list[dict]) -> None:
    for item in predictions:
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in item["top"])
        print(f"{item['image']}: {ranked}")
