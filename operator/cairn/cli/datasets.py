"""``cairn datasets``: datasets in the object store."""

from __future__ import annotations

import click

from cairn.cli.output import JSON, TABLE, YAML, output_option, write_document
from cairn.rundir import Env


@click.group()
def datasets() -> None:
    """Datasets in the object store."""


@datasets.command("digest")
@click.argument("uri")
@output_option(TABLE, JSON, YAML)
def datasets_digest(uri: str, output: str) -> None:
    """Print the content digest of an s3:// prefix, the value to pin in spec.dataset.sha256."""
    from cairn import objectstore as S3

    try:
        cfg = S3.S3Settings().connection()
        if cfg is None:
            raise click.ClickException(f"set {Env.S3_ENDPOINT}, {Env.S3_ACCESS_KEY} and {Env.S3_SECRET_KEY}")
        found = S3.dataset_digest(cfg.client(), uri)
    except S3.ObjectStoreError as exc:
        raise click.ClickException(str(exc)) from None
    if output != TABLE:
        write_document({"uri": uri, "digest": found.digest, "objects": found.objects, "bytes": found.bytes}, output)
        return
    click.echo(found.digest)
    click.echo(f"{found.objects} objects, {found.bytes} bytes", err=True)
