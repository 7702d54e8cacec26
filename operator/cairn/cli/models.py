"""``cairn models`` and ``cairn evals``: register a run's model files, move aliases through the gate, show
what was evaluated and who did what."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.table import Table

from cairn.cli.context import RUN_REF_HELP, resolve_run, store_of
from cairn.cli.output import JSON, TABLE, YAML, console, err_console, fmt_bytes, fmt_time, output_option, write_document
from cairn.rundir import RunStatus
from cairn.store.entities import EvalExample, Evaluation, ModelDetail, RunDetail
from cairn.store.registry import DEFAULT_MODEL_PATH

if TYPE_CHECKING:
    from cairn.gates import Example, Verdict

DEFAULT_NAMESPACE = "default"
MAX_KUBECONFIG_BYTES = 1 << 20
WHO_HELP = ("Who is recorded: the user of the current kubeconfig context (kube:USER@CONTEXT, from $KUBECONFIG or "
            "~/.kube/config), else the local user (local:$USER).")


def namespace_option(default: str | None = DEFAULT_NAMESPACE):  # noqa: ANN201
    return click.option("-n", "--namespace", default=default, show_default=default is not None,
                        help="Kubernetes namespace of the model (models are kept apart per namespace).")


def identity_from(kubeconfig: Any, local_user: str | None) -> str:
    """``kube:<user>@<context>`` from a parsed kubeconfig's current context, else ``local:<user>``. Pure."""
    if isinstance(kubeconfig, dict):
        current = kubeconfig.get("current-context")
        for entry in kubeconfig.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == current and isinstance(entry.get("context"), dict):
                user = entry["context"].get("user")
                if isinstance(user, str) and user and isinstance(current, str):
                    return f"kube:{user}@{current}"
    return f"local:{local_user or 'unknown'}"


def current_identity() -> str:
    """Who runs this command (see ``WHO_HELP``); a kubeconfig that cannot be read counts as none."""
    path = Path((os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or Path.home() / ".kube" / "config")
    kubeconfig = None
    try:
        with open(path, "rb") as f:
            kubeconfig = yaml.safe_load(f.read(MAX_KUBECONFIG_BYTES))
    except (OSError, yaml.YAMLError):
        pass
    try:
        local_user = getpass.getuser()
    except (KeyError, OSError):
        local_user = None
    return identity_from(kubeconfig, local_user)


@click.group()
def models() -> None:
    """The model registry: versions with their lineage, aliases and gated promotion."""


@models.command("register", epilog=RUN_REF_HELP)
@click.argument("model")
@click.option("--run", "run", required=True, help="The run whose artifact files are the model.")
@click.option("--path", default=DEFAULT_MODEL_PATH, show_default=True,
              help="The model's files: this artifact path or everything below it.")
@click.option("--alias", help="Also point this alias at the new version (only an alias nobody holds yet).")
@namespace_option()
@output_option(TABLE, JSON, YAML)
@click.pass_context
def models_register(ctx: click.Context, model: str, run: str, path: str, alias: str | None, namespace: str,
                    output: str) -> None:
    """Register the model files of a finished run as the next version of MODEL, with its lineage."""
    store = store_of(ctx)
    version = store.register_model_version(namespace, model, resolve_run(store, run), current_identity(), path, alias)
    if output != TABLE:
        write_document(version, output)
        return
    console.print(f"registered {namespace}/{model} version {version.version} from run {version.run_id} "
                  f"({len(version.files)} file(s) under {version.path}"
                  + (f", alias {alias}" if alias else "") + ")", highlight=False)


@models.command("list")
@namespace_option(default=None)
@output_option(TABLE, JSON, YAML)
@click.pass_context
def models_list(ctx: click.Context, namespace: str | None, output: str) -> None:
    """List models (all namespaces unless -n), with their latest version and aliases."""
    found = store_of(ctx).list_models(namespace)
    if output != TABLE:
        write_document(found, output)
        return
    table = Table(title=f"{len(found)} model(s)")
    for col in ("namespace", "model", "versions", "latest", "aliases", "created"):
        table.add_column(col)
    for m in found:
        table.add_row(m.namespace, m.name, str(m.versions), "-" if m.latest_version is None else str(m.latest_version),
                      ", ".join(f"{a}={v}" for a, v in m.aliases.items()) or "-", fmt_time(m.created_at))
    console.print(table)


@models.command("show")
@click.argument("model")
@namespace_option()
@output_option(TABLE, JSON, YAML)
@click.pass_context
def models_show(ctx: click.Context, model: str, namespace: str, output: str) -> None:
    """A model's versions with their lineage, its aliases, evaluations and audit trail."""
    detail = store_of(ctx).get_model(namespace, model)
    if output != TABLE:
        write_document(detail, output)
    else:
        print_model(detail)


def print_model(d: ModelDetail) -> None:
    console.print(f"[bold]{d.namespace}/{d.name}[/]  aliases: "
                  + (", ".join(f"{a.alias} → {a.version}" for a in d.aliases) or "none"), highlight=False)
    versions = Table(title="versions")
    for col in ("version", "aliases", "run", "image digest", "code commit", "dataset digest", "files", "registered",
                "by"):
        versions.add_column(col, overflow="fold")
    for v in d.versions:
        versions.add_row(str(v.version), ", ".join(v.aliases) or "-", v.run_id[:8], v.image_digest or "-",
                         (v.code_commit or "-")[:12], (v.dataset_digest or "-")[:16],
                         f"{len(v.files)} ({fmt_bytes(sum(f.size for f in v.files))})", fmt_time(v.created_at),
                         v.registered_by)
    console.print(versions)
    for v in d.versions:
        files = Table(title=f"version {v.version}: files under {v.path}")
        for col in ("path", "size", "sha256", "uri"):
            files.add_column(col, overflow="fold")
        for f in v.files:
            files.add_row(f.path, fmt_bytes(f.size), f.sha256, f.uri)
        console.print(files)
    if d.evaluations:
        console.print(evaluations_table(d.evaluations))
    audit = Table(title="audit")
    for col in ("when", "who", "action", "version", "alias", "was", "forced", "reason"):
        audit.add_column(col, overflow="fold")
    for a in d.audit:
        audit.add_row(fmt_time(a.at), a.who, a.action, "-" if a.version is None else str(a.version), a.alias or "-",
                      "-" if a.previous_version is None else str(a.previous_version),
                      "[red]yes[/]" if a.forced else "no", a.reason or "-")
    console.print(audit)


def evaluations_table(found: list[Evaluation]) -> Table:
    table = Table(title=f"{len(found)} evaluation(s)")
    for col in ("id", "candidate", "baseline", "passed", "reason", "eval runs", "dataset sha256", "image digest",
                "when"):
        table.add_column(col, overflow="fold")
    for e in found:
        baseline = "-" if e.baseline_version is None else str(e.baseline_version)
        table.add_row(str(e.id), str(e.candidate_version), baseline,
                      "[green]yes[/]" if e.passed else "[red]no[/]", str(e.verdict.get("reason", "")),
                      ", ".join(r[:8] for r in e.eval_run_ids) or "-", (e.dataset_sha256 or "-")[:16],
                      e.eval_image_digest or "-", fmt_time(e.created_at))
    return table


@models.command("promote")
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--alias", required=True, help="The alias to point at VERSION, e.g. production.")
@click.option("--force", is_flag=True, help="Move the alias although no passing evaluation allows it (needs --reason).")
@click.option("--reason", help="Why: required with --force, recorded in the audit trail.")
@namespace_option()
@output_option(TABLE, JSON, YAML)
@click.pass_context
def models_promote(ctx: click.Context, model: str, version: int, alias: str, force: bool, reason: str | None,
                   namespace: str, output: str) -> None:
    """Point ALIAS at VERSION of MODEL, if the gate allows it.

    Allowed when the alias has no holder yet, or when the latest stored evaluation of VERSION against the
    alias's current holder passed; otherwise refused with that evaluation's reason. --force --reason
    overrides the gate and is recorded (who, when, why) in the audit trail.
    """
    if force and not (reason or "").strip():
        raise click.UsageError("--force needs --reason: an override is recorded with why it was made")
    promotion = store_of(ctx).promote(namespace, model, version, alias, current_identity(), force, reason)
    if output != TABLE:
        write_document(promotion, output)
        return
    if not promotion.changed:
        console.print(f"{alias} already names version {version} of {namespace}/{model}", highlight=False)
        return
    was = "" if promotion.previous_version is None else f" (was version {promotion.previous_version})"
    console.print(f"{alias} → version {version} of {namespace}/{model}{was}", highlight=False)
    if promotion.forced:
        err_console.print("[yellow]forced past the gate; recorded in the audit trail with the reason[/]")


@click.group()
def evals() -> None:
    """Stored evaluations of model versions."""


@evals.command("show")
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1), required=False)
@namespace_option()
@output_option(TABLE, JSON, YAML)
@click.pass_context
def evals_show(ctx: click.Context, model: str, version: int | None, namespace: str, output: str) -> None:
    """Evaluations of MODEL (of candidate VERSION only, if given), oldest first, with their verdicts."""
    found = store_of(ctx).evaluations(namespace, model, version)
    if output != TABLE:
        write_document(found, output)
    else:
        console.print(evaluations_table(found))


def evaluation_inputs(candidate: RunDetail, baseline: RunDetail) -> tuple[str | None, str | None]:
    """The (dataset digest, eval image digest) both evaluation runs share, or a ClickException saying why
    their results cannot be compared: only runs that finished, on the same data, with the same code."""
    for role, run in (("candidate", candidate), ("baseline", baseline)):
        if run.summary.status != RunStatus.FINISHED:
            raise click.ClickException(f"the {role} evaluation run {run.summary.id} is {run.summary.status.value}, "
                                       f"not FINISHED: its results may be incomplete")
    digests = [sorted({d.digest or d.pinned_digest or "" for d in run.datasets}) for run in (candidate, baseline)]
    if digests[0] != digests[1]:
        raise click.ClickException(f"the evaluation runs read different datasets (candidate {digests[0] or 'none'}, "
                                   f"baseline {digests[1] or 'none'}): results on different data are not paired")
    images = [run.cluster.image_digest for run in (candidate, baseline)]
    if images[0] != images[1]:
        raise click.ClickException(f"the evaluation runs used different images (candidate {images[0] or 'unknown'}, "
                                   f"baseline {images[1] or 'unknown'}): the evaluation code must be the same")
    return (",".join(digests[0]) or None), images[0]


def as_examples(found: list[EvalExample]) -> list[Example]:
    from cairn.gates import Example

    return [Example(e.id, e.metrics, tuple(e.slices)) for e in found]


def verdict_table(v: Verdict) -> Table:
    table = Table(title=f"{v.decision.upper().replace('_', ' ')}: {v.reason}")
    for col in ("metric", "candidate", "baseline", "delta", "interval", "p", "verdict"):
        table.add_column(col, overflow="fold")
    for kind, c in [("primary", v.primary), *(("guard", g) for g in v.guards), *(("slice", x) for x in v.slices)]:
        p = "-" if c.p_value is None else f"{c.p_value:.3g}"
        mark = "[green]pass[/]" if c.passed else f"[red]{c.decision.replace('_', ' ')}[/]"
        table.add_row(f"{c.name} ({kind})", f"{c.candidate:.6g}", f"{c.baseline:.6g}", f"{c.delta:+.6g}",
                      f"[{c.ci_low:+.4g}, {c.ci_high:+.4g}]", p, mark)
    return table


@evals.command("compare", epilog=RUN_REF_HELP)
@click.argument("model")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--gate", "gate_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML file declaring the gate: primary, direction, minImprovement, confidence, guards, slices "
                   "(docs/evaluation-gates.md).")
@click.option("--candidate-run", required=True, help="The evaluation run of VERSION.")
@click.option("--baseline-run", required=True, help="The evaluation run of the version ALIAS names.")
@click.option("--alias", default="production", show_default=True, help="The alias whose holder is the baseline.")
@namespace_option()
@output_option(TABLE, JSON, YAML)
@click.pass_context
def evals_compare(ctx: click.Context, model: str, version: int, gate_file: Path, candidate_run: str,
                  baseline_run: str, alias: str, namespace: str, output: str) -> None:
    """Decide whether VERSION of MODEL beats the version ALIAS names, from the per-example results of two
    evaluation runs on the same dataset with the same evaluation image, and store the verdict that
    `cairn models promote` reads. Exits 1 unless the gate passed."""
    # Imported here: numpy and scipy cost about 75 MiB, and every role (operator, sidecar) starts from this CLI.
    try:
        from cairn.gates import decide, gate_spec_from
    except ImportError as exc:  # the CLI installed without its gates extra
        raise click.ClickException(f"evals compare needs numpy and scipy ({exc}): "
                                   "pip install 'cairn-tracking[gates]'") from None

    try:
        spec = gate_spec_from(yaml.safe_load(gate_file.read_text()) or {})
    except (ValueError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{gate_file}: {exc}") from None
    store = store_of(ctx)
    holder = next((a.version for a in store.get_model(namespace, model).aliases if a.alias == alias), None)
    if holder is None:
        raise click.ClickException(f"alias {alias!r} of {namespace}/{model} names no version yet: there is nothing "
                                   f"to compare against (promote VERSION to it directly)")
    runs = [store.get_run(resolve_run(store, ref)) for ref in (candidate_run, baseline_run)]
    dataset_sha256, image_digest = evaluation_inputs(*runs)
    try:
        verdict = decide(spec, as_examples(store.eval_examples(runs[0].summary.id)),
                         as_examples(store.eval_examples(runs[1].summary.id)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    evaluation = store.record_evaluation(namespace, model, version, holder, verdict.to_dict(),
                                         [r.summary.id for r in runs], dataset_sha256, image_digest)
    if output != TABLE:
        write_document(evaluation, output)
    else:
        console.print(verdict_table(verdict))
        console.print(f"stored as evaluation {evaluation.id}: version {version} against version {holder} "
                      f"({alias})", highlight=False)
    ctx.exit(0 if verdict.passed else 1)
