"""``cairn experiments``: the experiments that group runs."""

from __future__ import annotations

import click
from rich.table import Table

from cairn.cli.context import store_of
from cairn.cli.output import CSV, JSON, TABLE, YAML, console, fmt_time, output_option, write_document, write_rows

EXPERIMENT_COLUMNS = ["name", "runs", "last_start"]


@click.group()
def experiments() -> None:
    """Experiments group runs."""


@experiments.command("list")
@output_option(TABLE, JSON, YAML, CSV)
@click.pass_context
def experiments_list(ctx: click.Context, output: str) -> None:
    """Every experiment with its number of runs and when the last one started."""
    found = store_of(ctx).list_experiments()
    if output == CSV:
        write_rows(({"name": e.name, "runs": e.runs, "last_start": e.last_start} for e in found), EXPERIMENT_COLUMNS)
        return
    if output != TABLE:
        write_document(found, output)
        return
    table = Table(title="experiments")
    for col in ("experiment", "runs", "last run"):
        table.add_column(col)
    for e in found:
        table.add_row(e.name, str(e.runs), fmt_time(e.last_start))
    console.print(table)
