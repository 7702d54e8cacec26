"""``cairn experiments``: the experiments that group runs."""

from __future__ import annotations

import click
from rich.table import Table

from cairn.cli.context import store_of
from cairn.cli.output import CSV, JSON, TABLE, YAML, console, fmt_time, output_option, write_document, write_rows

EXPERIMENT_COLUMNS = ["namespace", "name", "runs", "last_start"]


@click.group()
def experiments() -> None:
    """Experiments group runs."""


@experiments.command("list")
@click.option("-n", "--namespace", help="Only experiments of this Kubernetes namespace (\"\": local runs).")
@output_option(TABLE, JSON, YAML, CSV)
@click.pass_context
def experiments_list(ctx: click.Context, namespace: str | None, output: str) -> None:
    """Every experiment with its number of runs and when the last one started. Experiments are per
    namespace: the same name in two namespaces is two experiments."""
    found = store_of(ctx).list_experiments(namespace)
    if output == CSV:
        write_rows(({"namespace": e.namespace, "name": e.name, "runs": e.runs, "last_start": e.last_start}
                    for e in found), EXPERIMENT_COLUMNS)
        return
    if output != TABLE:
        write_document(found, output)
        return
    table = Table(title="experiments")
    for col in ("namespace", "experiment", "runs", "last run"):
        table.add_column(col)
    for e in found:
        table.add_row(e.namespace or "", e.name, str(e.runs), fmt_time(e.last_start))
    console.print(table)
