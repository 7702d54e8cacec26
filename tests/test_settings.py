"""Each process's settings: parsed from CAIRN_* variables, flags win, a wrong value is one line, secrets
stay out of reprs, and the documentation's tables are generated from the classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cairn import rundir
from cairn.agent.prepare import PrepareSettings
from cairn.agent.sidecar import SidecarSettings
from cairn.controller.settings import OperatorSettings
from cairn.objectstore import S3Settings
from cairn.settings import SettingsError, env_names
from cairn.settings_docs import SETTINGS, render, stale_documents

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch):
    """A clean CAIRN_*/AWS_* environment; call it with variables to set them."""
    for var in list(os.environ):
        if var.startswith(("CAIRN_", "AWS_")):
            monkeypatch.delenv(var)

    def set_env(**variables: str) -> None:
        for var, value in variables.items():
            monkeypatch.setenv(var, value)

    return set_env


def test_operator_settings_from_the_environment_and_flags_that_win(env):
    env(CAIRN_NAMESPACES="ml, vision  nlp", CAIRN_METRICS_PORT="9191", CAIRN_IMAGE_PULL_POLICY="Never",
        CAIRN_SIDECAR_IMAGE="", CAIRN_DATABASE_URL="postgresql://cairn:pw@db/cairn")
    s = OperatorSettings()
    assert s.namespaces == ("ml", "vision", "nlp") and s.metrics_port == 9191 and s.liveness_port == 8080
    assert s.database_url == "postgresql://cairn:pw@db/cairn"
    assert s.pod.sidecar_image == "cairn:dev"  # empty counts as unset
    assert (s.pod.image_pull_policy, s.pod.objectstore_secret) == ("Never", "cairn-objectstore")

    flags = OperatorSettings(namespaces=("a",), metrics_port=0, sidecar_image="img:1")
    assert (flags.namespaces, flags.metrics_port, flags.pod.sidecar_image) == (("a",), 0, "img:1")
    with pytest.raises(SettingsError, match="^no_such_flag: not a setting$"):
        OperatorSettings(no_such_flag=1)


def test_an_empty_objectstore_secret_means_no_object_store(env):
    assert OperatorSettings().pod.objectstore_secret == "cairn-objectstore"
    env(CAIRN_OBJECTSTORE_SECRET="")
    assert OperatorSettings().pod.objectstore_secret == ""
    assert OperatorSettings(objectstore_secret="mine").pod.objectstore_secret == "mine"


@pytest.mark.parametrize("cls, variables, message", [
    (OperatorSettings, {"CAIRN_METRICS_PORT": "abc"},
     "CAIRN_METRICS_PORT: expected an integer from 0 to 65535, got 'abc'"),
    (OperatorSettings, {"CAIRN_LIVENESS_PORT": "65536"},
     "CAIRN_LIVENESS_PORT: expected an integer from 0 to 65535, got '65536'"),
    (OperatorSettings, {"CAIRN_IMAGE_PULL_POLICY": "Sometimes"},
     "CAIRN_IMAGE_PULL_POLICY: expected one of Always, IfNotPresent, Never, got 'Sometimes'"),
    (PrepareSettings, {"CAIRN_RUN_DIR": "/r", "CAIRN_RUN_ID": "x", "CAIRN_PREPARE_TIMEOUT": "soon"},
     "CAIRN_PREPARE_TIMEOUT: expected a number of at least 0, got 'soon'"),
    (SidecarSettings, {"CAIRN_RUN_DIR": "/r", "CAIRN_RUN_ID": "x", "CAIRN_DRAIN_TIMEOUT": "-1"},
     "CAIRN_DRAIN_TIMEOUT: expected a number of at least 0, got '-1'"),
    (SidecarSettings, {"CAIRN_RUN_ID": "x"}, "CAIRN_RUN_DIR: required, but not set"),
    (SidecarSettings, {"CAIRN_RUN_DIR": "/r", "CAIRN_RUN_ID": "x", "CAIRN_PARAMS": "[1]"},
     "CAIRN_PARAMS: expected a JSON object, got '[1]'"),
    (S3Settings, {"AWS_ENDPOINT_URL": "ftp://x"},
     "CAIRN_S3_ENDPOINT (or AWS_ENDPOINT_URL): expected a URL such as http://host:port, got 'ftp://x'"),
    (S3Settings, {"CAIRN_S3_PART_SIZE": "1024"}, "CAIRN_S3_PART_SIZE: expected an integer of at least 5242880"),
])
def test_a_wrong_value_is_one_line_naming_the_variable_and_what_it_accepts(env, cls, variables, message):
    env(**variables)
    with pytest.raises(SettingsError) as err:
        cls()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_several_wrong_values_stay_one_line(env):
    env(CAIRN_METRICS_PORT="x", CAIRN_LIVENESS_PORT="y")
    with pytest.raises(SettingsError, match="^CAIRN_METRICS_PORT: .*; CAIRN_LIVENESS_PORT: .*'y'$"):
        OperatorSettings()


def test_secrets_stay_out_of_reprs_and_errors(env, tmp_path):
    env(CAIRN_DATABASE_URL="postgresql://cairn:hunter2@db/cairn", CAIRN_RUN_DIR=str(tmp_path), CAIRN_RUN_ID="r",
        CAIRN_S3_ENDPOINT="minio:9000", CAIRN_S3_SECRET_KEY="s3cr3t-key", CAIRN_S3_CA_BUNDLE="PEM")
    shown = " ".join(repr(s) for s in (OperatorSettings(), SidecarSettings(), PrepareSettings(), S3Settings(),
                                       S3Settings().connection()))
    assert "hunter2" not in shown and "s3cr3t-key" not in shown
    assert S3Settings().connection().secret_key == "s3cr3t-key"  # still there for the client
    env(CAIRN_S3_PART_SIZE="many")
    with pytest.raises(SettingsError) as err:
        S3Settings()
    assert "s3cr3t-key" not in str(err.value)


def test_s3_settings_and_their_aws_fallbacks(env, tmp_path):
    assert S3Settings().connection() is None  # no endpoint: no object store
    env(CAIRN_S3_ENDPOINT="https://minio.cairn:9000", CAIRN_S3_ACCESS_KEY="a", CAIRN_S3_SECRET_KEY="s",
        CAIRN_S3_BUCKET="runs")
    cfg = S3Settings().connection()
    assert (cfg.endpoint, cfg.secure, cfg.access_key, cfg.bucket) == ("minio.cairn:9000", True, "a", "runs")
    for var in ("CAIRN_S3_ENDPOINT", "CAIRN_S3_ACCESS_KEY", "CAIRN_S3_SECRET_KEY", "CAIRN_S3_BUCKET"):
        os.environ.pop(var)
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM")
    env(AWS_ENDPOINT_URL="10.0.0.1:9000", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_REGION="eu",
        AWS_CA_BUNDLE=str(ca), CAIRN_S3_PART_SIZE=str(32 << 20))
    aws = S3Settings().connection()
    assert (aws.endpoint, aws.secure, aws.region, aws.bucket, aws.ca_bundle) == ("10.0.0.1:9000", False, "eu", None,
                                                                                   "PEM")
    assert (aws.access_key, aws.secret_key, aws.part_size) == ("k", "s", 32 << 20)


def test_every_settings_variable_is_named_in_the_pod_contract():
    known = {v for k, v in vars(rundir.Env).items() if not k.startswith("_")}
    for cls in SETTINGS.values():
        for name in cls.model_fields:
            names = env_names(cls, name)
            assert names[0].startswith("AWS_") or names[0] in known, (cls.__name__, name, names)
            assert {n for n in names if n.startswith("CAIRN_")} <= known, (cls.__name__, name, names)


def test_settings_tables_in_the_docs_are_up_to_date():
    assert stale_documents(ROOT) == [], "run: PYTHONPATH=operator python -m cairn.settings_docs"
    readme = (ROOT / "README.md").read_text()
    assert "<!-- settings:operator -->\n| variable |" in readme
    docs = (ROOT / "docs/settings.md").read_text()
    assert all(f"<!-- settings:{name} -->\n| variable |" in docs for name in SETTINGS)
    assert render("<!-- settings:operator -->\nold\n<!-- /settings:operator -->") != \
        "<!-- settings:operator -->\nold\n<!-- /settings:operator -->"


def test_the_cli_prints_one_line_and_exits_2_on_a_wrong_setting(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "AWS_"))}
    env = {**base, "CAIRN_RUN_DIR": str(tmp_path), "CAIRN_RUN_ID": "r", "CAIRN_ATTEMPT": "zero"}
    for command in ("sidecar", "prepare"):
        r = subprocess.run([sys.executable, "-m", "cairn.cli.main", command], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == "error: CAIRN_ATTEMPT: expected an integer of at least 1, got 'zero'"
