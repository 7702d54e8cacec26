"""The model registry: versions registered from a run's artifacts, aliases, evaluations and the audit trail.

``ModelRegistry`` is mixed into ``TrackingStore``: one store contract, one session per call. Whether an
alias may move is decided by ``promotion_refusal`` (pure); the statistics behind an evaluation's verdict
are not computed here: a verdict is stored as the evaluator's JSON, with at least ``passed`` and ``reason``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cairn.rundir import RunStatus, UnsafePath, safe_relative_path
from cairn.store.db import StoreError
from cairn.store.entities import (
    AuditEntry,
    Evaluation,
    ModelAlias,
    ModelDetail,
    ModelFile,
    ModelSummary,
    ModelVersion,
    Promotion,
)
from cairn.store.models import (
    Artifact,
    CodeVersion,
    Dataset,
    ModelAliasRow,
    ModelAuditRow,
    ModelEvaluationRow,
    ModelFileRow,
    ModelVersionRow,
    Param,
    RegisteredModel,
    Run,
    utcnow,
)

DEFAULT_MODEL_PATH = "artifacts/model/"
REGISTER, PROMOTE = "register", "promote"  # audit actions
MAX_WHO_LENGTH = 255
MAX_REASON_LENGTH = 2000
MAX_EVAL_RUNS = 1000
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes namespace (DNS label)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")  # starts with a letter, so it is never taken for a version


class ModelNotFound(StoreError):
    def __init__(self, namespace: str, name: str, version: int | None = None) -> None:
        what = f"model {namespace}/{name}" + (f" has no version {version}" if version is not None else " not found")
        super().__init__(what, code="MODEL_NOT_FOUND")


class RegistrationRefused(StoreError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="REGISTRATION_REFUSED")


class PromotionRefused(StoreError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="PROMOTION_REFUSED")


def param_value(text_value: str) -> Any:
    """A parameter as stored (JSON text) back to its value; text that is not JSON stays text."""
    try:
        return json.loads(text_value)
    except ValueError:
        return text_value


def _checked(value: str, pattern: re.Pattern, what: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise StoreError(f"{what} {str(value)[:80]!r} is not valid: {rule}", code="BAD_NAME")
    return value


def check_namespace(namespace: str) -> str:
    return _checked(namespace, _NAMESPACE, "namespace", "a Kubernetes namespace (lower-case DNS label)")


def check_model_name(name: str) -> str:
    return _checked(name, _MODEL_NAME, "model name", "letters, digits, '.', '_', '-', at most 253, not starting "
                    "with a punctuation mark")


def check_alias(alias: str) -> str:
    return _checked(alias, _ALIAS, "alias", "a lower-case letter, then lower-case letters, digits, '_' or '-', "
                    "at most 63")


def files_under(artifacts: Sequence[Artifact], path: str) -> tuple[str, list[Artifact]]:
    """The artifacts at ``path`` or below it (``model.pt`` also finds ``artifacts/model.pt``), and the prefix
    that found them; an empty list when none is there."""
    prefix = safe_relative_path(path)
    in_artifacts = prefix == "artifacts" or prefix.startswith("artifacts/")
    candidates = [prefix] if in_artifacts else [prefix, "artifacts/" + prefix]
    for candidate in candidates:
        chosen = [a for a in artifacts if a.path == candidate or a.path.startswith(candidate + "/")]
        if chosen:
            return candidate, chosen
    return prefix, []


def promotion_refusal(alias: str, version: int, holder: int | None, latest: Evaluation | None) -> str | None:
    """Why ``alias`` may not move to ``version`` without ``--force``; None when it may.

    It may when the alias has no holder yet (or already names ``version``), or when the latest evaluation
    of ``version`` against the holder passed. ``latest`` must be that pair's latest evaluation, if any.
    """
    if holder is None or holder == version:
        return None
    if latest is None:
        return (f"no evaluation of version {version} against version {holder} (the holder of {alias!r}) is stored; "
                f"evaluate it against version {holder} first")
    if latest.passed:
        return None
    return (f"version {version} did not pass its latest evaluation against version {holder} (the holder of "
            f"{alias!r}; evaluation {latest.id} of {latest.created_at:%Y-%m-%d %H:%M:%S}): "
            f"{latest.verdict.get('reason', 'no reason given')}")


def _version(row: ModelVersionRow, namespace: str, model: str, files: Iterable[ModelFileRow],
             aliases: Iterable[str]) -> ModelVersion:
    return ModelVersion(namespace, model, row.version, str(row.run_id), row.path, row.image_digest, row.code_repository,
                        row.code_commit, row.dataset_uri, row.dataset_digest, dict(row.params),
                        [ModelFile(f.path, f.uri, f.size, f.sha256) for f in sorted(files, key=lambda f: f.path)],
                        row.registered_by, row.created_at, sorted(aliases))


def _evaluation(row: ModelEvaluationRow) -> Evaluation:
    return Evaluation(row.id, row.candidate_version, row.baseline_version, list(row.eval_run_ids), row.dataset_sha256,
                      row.eval_image_digest, row.passed, dict(row.verdict), row.created_at)


def _audit(row: ModelAuditRow) -> AuditEntry:
    return AuditEntry(row.action, row.version, row.alias, row.previous_version, row.who, row.at, row.reason,
                      row.forced)


def _who(who: str) -> str:
    if not who or not who.strip():
        raise StoreError("who did it must be known (a user name)", code="BAD_IDENTITY")
    return who.strip()[:MAX_WHO_LENGTH]


class ModelRegistry:
    """Registry methods of ``TrackingStore`` (which provides ``_session`` and ``backend``)."""

    def _model_for_update(self, s: Session, namespace: str, name: str, create: bool = False) -> RegisteredModel:
        """The model's row, locked until the transaction ends (on PostgreSQL; SQLite has one writer)."""
        check_namespace(namespace)
        check_model_name(name)
        where = (RegisteredModel.namespace == namespace) & (RegisteredModel.name == name)
        if create:
            s.execute(self.backend.insert(RegisteredModel).values(namespace=namespace, name=name, created_at=utcnow())
                      .on_conflict_do_nothing())
        row = s.execute(select(RegisteredModel).where(where).with_for_update()).scalar_one_or_none()
        if row is None:
            raise ModelNotFound(namespace, name)
        return row

    def _model(self, s: Session, namespace: str, name: str) -> RegisteredModel:
        row = s.execute(select(RegisteredModel).where(RegisteredModel.namespace == namespace,
                                                      RegisteredModel.name == name)).scalar_one_or_none()
        if row is None:
            raise ModelNotFound(namespace, name)
        return row

    @staticmethod
    def _has_version(s: Session, model_id: int, version: int) -> bool:
        return s.execute(select(ModelVersionRow.id).where(ModelVersionRow.model_id == model_id,
                                                          ModelVersionRow.version == version)).first() is not None

    @staticmethod
    def _holder(s: Session, model_id: int, alias: str) -> int | None:
        return s.execute(select(ModelAliasRow.version).where(ModelAliasRow.model_id == model_id,
                                                             ModelAliasRow.alias == alias)).scalar_one_or_none()

    def register_model_version(self, namespace: str, model: str, run_id: str, who: str,
                               path: str = DEFAULT_MODEL_PATH, alias: str | None = None) -> ModelVersion:
        """Register the files of run ``run_id`` at ``path`` as the next version of ``namespace/model``.

        The lineage is copied from the run: image digest, code commit, dataset digest, parameters and the
        sha256 of every file. Refused (``RegistrationRefused``) for a run that did not finish successfully
        or has no artifact at ``path``, and, with ``alias``, for an alias that already has a holder (moving
        one goes through ``promote``). Everything is written in one transaction, with its audit entry.
        """
        who = _who(who)
        if alias is not None:
            check_alias(alias)
        try:
            rid = uuid.UUID(str(run_id))
        except ValueError:
            raise RegistrationRefused(f"{run_id!r} is not a run id") from None
        with self._session() as s:
            run = s.get(Run, rid)
            if run is None:
                raise RegistrationRefused(f"no run {rid}")
            if run.status != RunStatus.FINISHED:
                raise RegistrationRefused(f"run {rid} is {run.status}: only a run that finished successfully "
                                          f"(FINISHED) can be registered")
            artifacts = list(s.execute(select(Artifact).where(Artifact.run_id == rid)
                                       .order_by(Artifact.path)).scalars())
            try:
                prefix, files = files_under(artifacts, path)
            except UnsafePath as exc:
                raise RegistrationRefused(f"path {path!r}: {exc}") from None
            if not files:
                has = ", ".join(a.path for a in artifacts[:10]) or "none"
                raise RegistrationRefused(f"run {rid} has no artifact files at {prefix!r} (its artifacts: {has})")
            row = self._model_for_update(s, namespace, model, create=True)
            if alias is not None and (holder := self._holder(s, row.id, alias)) is not None:
                raise RegistrationRefused(f"alias {alias!r} of {namespace}/{model} is held by version {holder}: "
                                          f"register without --alias, evaluate, then promote")
            number = (s.execute(select(func.max(ModelVersionRow.version))
                                .where(ModelVersionRow.model_id == row.id)).scalar_one_or_none() or 0) + 1
            code = s.get(CodeVersion, rid)
            dataset = s.execute(select(Dataset).where(Dataset.run_id == rid).order_by(Dataset.uri)).scalars().first()
            params = {p.key: param_value(p.value)
                      for p in s.execute(select(Param).where(Param.run_id == rid)).scalars()}
            now = utcnow()
            version = ModelVersionRow(
                model_id=row.id, version=number, run_id=rid, path=prefix, image_digest=run.image_digest,
                code_repository=code.repository if code else None, code_commit=code.commit if code else None,
                dataset_uri=dataset.uri if dataset else None, dataset_digest=dataset.digest if dataset else None,
                params=params, registered_by=who, created_at=now)
            s.add(version)
            s.flush()
            s.refresh(version)  # times as the database gives them back, as every read returns them
            file_rows = [ModelFileRow(version_id=version.id, path=a.path, uri=a.uri, size=a.size, sha256=a.sha256)
                         for a in files]
            s.add_all(file_rows)
            s.add(ModelAuditRow(model_id=row.id, action=REGISTER, version=number, who=who, at=now, forced=False))
            if alias is not None:
                s.add(ModelAliasRow(model_id=row.id, alias=alias, version=number, set_at=now, set_by=who))
                s.add(ModelAuditRow(model_id=row.id, action=PROMOTE, version=number, alias=alias, who=who, at=now,
                                    forced=False))
            return _version(version, namespace, model, file_rows, [alias] if alias else [])

    def record_evaluation(self, namespace: str, model: str, candidate_version: int, baseline_version: int | None,
                          verdict: dict[str, Any], eval_run_ids: Sequence[str] = (),
                          dataset_sha256: str | None = None, eval_image_digest: str | None = None) -> Evaluation:
        """Store an evaluation of ``candidate_version`` against ``baseline_version`` (None: against nothing).

        ``verdict`` is the evaluator's JSON object, with at least ``passed`` (true or false) and ``reason``
        (a string); it is stored as given and ``passed`` is what the promotion gate reads.
        """
        if not isinstance(verdict, dict) or type(verdict.get("passed")) is not bool \
                or not isinstance(verdict.get("reason"), str):
            raise StoreError("a verdict is a JSON object with 'passed' (true or false) and 'reason' (a string)",
                             code="BAD_VERDICT")
        try:
            json.dumps(verdict, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"the verdict is not plain JSON: {exc}", code="BAD_VERDICT") from None
        if len(eval_run_ids) > MAX_EVAL_RUNS:
            raise StoreError(f"more than {MAX_EVAL_RUNS} evaluation runs", code="BAD_VERDICT")
        try:
            run_ids = [str(uuid.UUID(str(r))) for r in eval_run_ids]
        except ValueError:
            raise StoreError(f"eval run ids must be run ids: {list(eval_run_ids)[:5]}", code="BAD_VERDICT") from None
        with self._session() as s:
            row = self._model(s, namespace, model)
            for number in (candidate_version, baseline_version):
                if number is not None and not self._has_version(s, row.id, number):
                    raise ModelNotFound(namespace, model, number)
            evaluation = ModelEvaluationRow(
                model_id=row.id, candidate_version=candidate_version, baseline_version=baseline_version,
                eval_run_ids=run_ids, dataset_sha256=dataset_sha256, eval_image_digest=eval_image_digest,
                passed=verdict["passed"], verdict=verdict, created_at=utcnow())
            s.add(evaluation)
            s.flush()
            s.refresh(evaluation)
            return _evaluation(evaluation)

    def promote(self, namespace: str, model: str, version: int, alias: str, who: str, force: bool = False,
                reason: str | None = None) -> Promotion:
        """Point ``alias`` at ``version``, if ``promotion_refusal`` allows it or ``force`` overrides it.

        ``force`` needs a ``reason``; both, and who did it, go into the audit trail (``forced`` only when
        the gate refused). ``PromotionRefused`` says why otherwise, with the stored verdict's reason.
        """
        check_alias(alias)
        who = _who(who)
        reason = (reason or "").strip() or None
        if force and reason is None:
            raise PromotionRefused("--force needs --reason: an override is recorded with why it was made")
        if reason is not None and len(reason) > MAX_REASON_LENGTH:
            raise PromotionRefused(f"the reason is longer than {MAX_REASON_LENGTH} characters")
        with self._session() as s:
            row = self._model_for_update(s, namespace, model)
            if not self._has_version(s, row.id, version):
                raise ModelNotFound(namespace, model, version)
            holder = self._holder(s, row.id, alias)
            latest = None
            if holder is not None and holder != version:
                found = s.execute(
                    select(ModelEvaluationRow)
                    .where(ModelEvaluationRow.model_id == row.id, ModelEvaluationRow.candidate_version == version,
                           ModelEvaluationRow.baseline_version == holder)
                    .order_by(ModelEvaluationRow.created_at.desc(), ModelEvaluationRow.id.desc())
                ).scalars().first()
                latest = _evaluation(found) if found is not None else None
            refusal = promotion_refusal(alias, version, holder, latest)
            if refusal is not None and not force:
                raise PromotionRefused(f"{namespace}/{model}: {refusal}")
            if holder == version:
                return Promotion(alias, version, holder, forced=False, changed=False)
            now = utcnow()
            stmt = self.backend.insert(ModelAliasRow).values(model_id=row.id, alias=alias, version=version, set_at=now,
                                                             set_by=who)
            s.execute(stmt.on_conflict_do_update(index_elements=["model_id", "alias"],
                                                 set_={"version": version, "set_at": now, "set_by": who}))
            s.add(ModelAuditRow(model_id=row.id, action=PROMOTE, version=version, alias=alias, previous_version=holder,
                                who=who, at=now, reason=reason, forced=refusal is not None))
            return Promotion(alias, version, holder, forced=refusal is not None, changed=True)

    def list_models(self, namespace: str | None = None) -> list[ModelSummary]:
        """Models (of one namespace, or all) by namespace and name, with their version count and aliases."""
        with self._session() as s:
            q = (select(RegisteredModel, func.count(ModelVersionRow.id), func.max(ModelVersionRow.version))
                 .outerjoin(ModelVersionRow, ModelVersionRow.model_id == RegisteredModel.id)
                 .group_by(RegisteredModel.id).order_by(RegisteredModel.namespace, RegisteredModel.name))
            if namespace:
                q = q.where(RegisteredModel.namespace == namespace)
            rows = s.execute(q).all()
            aliases: dict[int, dict[str, int]] = {}
            ids = [m.id for m, _, _ in rows]
            for a in s.execute(select(ModelAliasRow).where(ModelAliasRow.model_id.in_(ids))).scalars():
                aliases.setdefault(a.model_id, {})[a.alias] = a.version
            return [ModelSummary(m.namespace, m.name, n, latest, dict(sorted(aliases.get(m.id, {}).items())),
                                 m.created_at) for m, n, latest in rows]

    def get_model(self, namespace: str, name: str) -> ModelDetail:
        """A model with its versions (lineage and files), aliases, evaluations and audit trail."""
        with self._session() as s:
            row = self._model(s, namespace, name)
            versions = list(s.execute(select(ModelVersionRow).where(ModelVersionRow.model_id == row.id)
                                      .order_by(ModelVersionRow.version)).scalars())
            files: dict[int, list[ModelFileRow]] = {}
            if versions:
                for f in s.execute(select(ModelFileRow).where(ModelFileRow.version_id.in_([v.id for v in versions])))\
                        .scalars():
                    files.setdefault(f.version_id, []).append(f)
            alias_rows = list(s.execute(select(ModelAliasRow).where(ModelAliasRow.model_id == row.id)
                                        .order_by(ModelAliasRow.alias)).scalars())
            held: dict[int, list[str]] = {}
            for a in alias_rows:
                held.setdefault(a.version, []).append(a.alias)
            audit = s.execute(select(ModelAuditRow).where(ModelAuditRow.model_id == row.id)
                              .order_by(ModelAuditRow.at, ModelAuditRow.id)).scalars()
            return ModelDetail(
                row.namespace, row.name, row.created_at,
                [_version(v, row.namespace, row.name, files.get(v.id, []), held.get(v.version, [])) for v in versions],
                [ModelAlias(a.alias, a.version, a.set_at, a.set_by) for a in alias_rows],
                self._evaluations(s, row.id),
                [_audit(a) for a in audit])

    @staticmethod
    def _evaluations(s: Session, model_id: int, version: int | None = None) -> list[Evaluation]:
        q = select(ModelEvaluationRow).where(ModelEvaluationRow.model_id == model_id)
        if version is not None:
            q = q.where(ModelEvaluationRow.candidate_version == version)
        return [_evaluation(e) for e in s.execute(q.order_by(ModelEvaluationRow.created_at,
                                                             ModelEvaluationRow.id)).scalars()]

    def evaluations(self, namespace: str, name: str, version: int | None = None) -> list[Evaluation]:
        """Stored evaluations of a model, or of one candidate version, oldest first."""
        with self._session() as s:
            row = self._model(s, namespace, name)
            if version is not None and not self._has_version(s, row.id, version):
                raise ModelNotFound(namespace, name, version)
            return self._evaluations(s, row.id, version)
