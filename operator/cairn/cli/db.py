"""``cairn db``: the store's schema."""

from __future__ import annotations

import click

from cairn.cli.context import database_url
from cairn.cli.output import JSON, TABLE, YAML, output_option, write_document
from cairn.store import db


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the store's schema to this version of Cairn (safe to repeat)."""
    engine = db.get_engine(database_url(ctx))
    db.check_reachable(engine)
    before, after = db.upgrade(engine)
    click.echo(f"schema {before or 'empty'} -> {after} ({db.redact(str(engine.url))})")
    if engine.dialect.name == "postgresql":
        from cairn.tenancy.database import upgrade_tenant_schemas

        for schema, (before, after) in upgrade_tenant_schemas(engine.url.render_as_string(hide_password=False)).items():
            click.echo(f"tenant schema {schema}: {before or 'empty'} -> {after}")


@db_group.command("current")
@output_option(TABLE, JSON, YAML)
@click.pass_context
def db_current(ctx: click.Context, output: str) -> None:
    """Print the schema revision of the store and the one this Cairn needs."""
    engine = db.get_engine(database_url(ctx))
    db.check_reachable(engine)
    current, needed = db.current_revision(engine), db.head_revision()
    if output != TABLE:
        write_document({"current": current, "needed": needed}, output)
        return
    click.echo(f"current {current or 'none'}, needed {needed}")
