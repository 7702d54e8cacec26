"""``cairn server``: serve the read API and web UI with uvicorn."""

from __future__ import annotations

import click

from cairn.cli.context import database_url


@click.command("server")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
@click.option("--database-url", "server_database_url", default=None,
              help="SQLAlchemy URL of the store (default: the CLI's, else the local SQLite store).")
@click.option("--auth", type=click.Choice(["none", "kubernetes", "proxy"]), default=None,
              help="none (loopback only), kubernetes (bearer tokens) or proxy (trusted headers).")
@click.pass_context
def server_cmd(ctx: click.Context, host: str | None, port: int | None, server_database_url: str | None,
               auth: str | None) -> None:
    """Serve runs over HTTP: the REST API under /api/v1 and the web UI.

    With no --database-url it reads the local SQLite store of `cairn run`.
    """
    import uvicorn

    from cairn.objectstore import S3Settings
    from cairn.server.access import access_for, kubernetes_api_client
    from cairn.server.app import create_app
    from cairn.server.settings import ServerSettings
    from cairn.server.tenants import SharedStores, TenantStores, kubernetes_secret_reader
    from cairn.settings import reveal
    from cairn.store import TrackingStore

    given = {"host": host, "port": port, "auth": auth, "database_url": server_database_url or database_url(ctx)}
    flags = {name: value for name, value in given.items() if value is not None}
    settings = ServerSettings(**flags)
    if settings.tenancy:
        stores = TenantStores(kubernetes_secret_reader(kubernetes_api_client()))
    else:
        stores = SharedStores(TrackingStore(reveal(settings.database_url)), S3Settings().connection())
    app = create_app(settings, stores, access_for(settings))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", proxy_headers=False)
