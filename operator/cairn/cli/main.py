"""Entry point of the ``cairn`` command: assembles the user commands and the in-pod roles."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from rich.markup import escape

from cairn.cli.datasets import datasets
from cairn.cli.db import db_group
from cairn.cli.experiments import experiments
from cairn.cli.local import run_cmd, sync
from cairn.cli.models import evals, models
from cairn.cli.output import err_console
from cairn.cli.roles import RoleCommand, agent, operator_cmd, prepare, sidecar
from cairn.cli.runs import runs
from cairn.cli.server import server_cmd
from cairn.rundir import Env
from cairn.settings import SettingsError
from cairn.store import db


class CairnGroup(click.Group):
    """Lists user commands and in-pod roles apart; turns store errors (exit code 1) and wrong settings
    (exit code 2) into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except db.StoreError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(1)
        except SettingsError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(2)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Commands": [], "In-pod roles": []}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            section = "In-pod roles" if isinstance(cmd, RoleCommand) else "Commands"
            sections[section].append((name, cmd.get_short_help_str(formatter.width - 6 - len(name))))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


@click.group(cls=CairnGroup)
@click.option("--database-url", envvar=Env.DATABASE_URL, default=None,
              help="SQLAlchemy URL of the store (default: SQLite under $CAIRN_HOME, ~/.cairn).")
@click.option("--server", envvar=Env.SERVER, default=None, metavar="URL",
              help="Read through this cairn server, with the current kubeconfig's credentials, instead of a database.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the agent and store do.")
@click.version_option(package_name="cairn-tracking")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, server: str | None, verbose: bool) -> None:
    """Cairn: tracked training runs, locally or on Kubernetes."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.ensure_object(dict).update(database_url=database_url, server=server)


for command in (runs, experiments, models, evals, datasets, db_group, run_cmd, sync, server_cmd, agent, operator_cmd,
                sidecar, prepare):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="cairn")


if __name__ == "__main__":  # ``python -m cairn.cli.main``, as the tests and pods have long run it
    main()
