"""What the commands share: the store they talk to and how a run named on the command line is found."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cairn.store import db

if TYPE_CHECKING:
    from cairn.store import TrackingStore

RUN_REF_HELP = "RUN is an id, an unambiguous id prefix, or NAMESPACE/TRAININGRUN-NAME."


class AmbiguousRun(db.StoreError):
    def __init__(self, ref: str, ids: list[str]) -> None:
        super().__init__(f"{ref!r} names {len(ids)} runs: {', '.join(ids)}; give one of these ids",
                         code="AMBIGUOUS_RUN_ID")


def database_url(ctx: click.Context) -> str | None:
    return ctx.find_object(dict).get("database_url")


def store_of(ctx: click.Context) -> TrackingStore:
    """The command's store, opened on first use (commands that need none never connect); with ``--server``
    a ``RemoteStore`` that reads through the server and answers the same calls with the same entities."""
    obj = ctx.find_object(dict)
    if "store" not in obj:
        if obj.get("server"):
            from cairn.client import RemoteStore, kubeconfig_identity

            token, namespace = kubeconfig_identity()
            obj["store"] = RemoteStore(obj["server"], token, namespace)
        else:
            from cairn.store import TrackingStore

            obj["store"] = TrackingStore(database_url(ctx))
    return obj["store"]


def resolve_run(store: TrackingStore, ref: str) -> str:
    """The full id of the run ``ref`` names: ``NAMESPACE/NAME`` of its TrainingRun, or an id or id prefix."""
    namespace, slash, name = ref.strip().partition("/")
    if not slash:
        return store.resolve_run_id(ref)
    if not namespace or not name:
        raise click.BadParameter(f"{ref!r}: expected NAMESPACE/TRAININGRUN-NAME", param_hint="RUN")
    ids = store.run_ids_named(namespace, name)
    if not ids:
        raise db.StoreError(f"no run of TrainingRun {namespace}/{name}", code="RUN_NOT_FOUND")
    if len(ids) > 1:
        raise AmbiguousRun(ref, ids)
    return ids[0]
