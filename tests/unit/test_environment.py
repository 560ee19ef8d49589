"""Without the sandbox selected, a missing URL or credential fails loading and names it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from activation.lib.environment import (
    SANDBOX_URL_VAR,
    MissingSettingError,
    resolve_endpoints,
)

REAL_SERVICE_VARS = (
    SANDBOX_URL_VAR,
    "AIRBYTE_REST_API_BASE_URL",
    "AIRBYTE_CONFIGURATION_API_BASE_URL",
    "AIRBYTE_WORKSPACE_ID",
    "AIRBYTE_CLIENT_ID",
    "AIRBYTE_CLIENT_SECRET",
    "HIGHTOUCH_API_TOKEN",
    "SLACK_WEBHOOK_URL",
)


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REAL_SERVICE_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("bare_environment")
def test_every_missing_variable_is_named() -> None:
    with pytest.raises(MissingSettingError) as error:
        resolve_endpoints()
    message = str(error.value)
    for name in REAL_SERVICE_VARS[1:4] + ("HIGHTOUCH_API_TOKEN", "SLACK_WEBHOOK_URL"):
        assert name in message
    assert SANDBOX_URL_VAR in message  # says how to choose the sandbox instead


@pytest.mark.usefixtures("bare_environment")
def test_one_missing_variable_is_named_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRBYTE_REST_API_BASE_URL", "https://airbyte.example/api/public/v1")
    monkeypatch.setenv("AIRBYTE_CONFIGURATION_API_BASE_URL", "https://airbyte.example/api/v1")
    monkeypatch.setenv("AIRBYTE_WORKSPACE_ID", "ws")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.example/services/x")
    monkeypatch.setenv("HIGHTOUCH_API_TOKEN", "   ")  # blank counts as missing
    with pytest.raises(MissingSettingError, match=r"not set: HIGHTOUCH_API_TOKEN\."):
        resolve_endpoints()


@pytest.mark.usefixtures("bare_environment")
def test_airbyte_client_id_needs_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AIRBYTE_REST_API_BASE_URL": "https://a/api/public/v1",
        "AIRBYTE_CONFIGURATION_API_BASE_URL": "https://a/api/v1",
        "AIRBYTE_WORKSPACE_ID": "ws",
        "HIGHTOUCH_API_TOKEN": "t",
        "SLACK_WEBHOOK_URL": "https://s/x",
        "AIRBYTE_CLIENT_ID": "client",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MissingSettingError, match="AIRBYTE_CLIENT_SECRET"):
        resolve_endpoints()


@pytest.mark.usefixtures("bare_environment")
def test_sandbox_selected_still_needs_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SANDBOX_URL_VAR, "http://127.0.0.1:9")
    with pytest.raises(MissingSettingError, match="HIGHTOUCH_API_TOKEN"):
        resolve_endpoints()
    monkeypatch.setenv("HIGHTOUCH_API_TOKEN", "t")
    endpoints = resolve_endpoints()
    assert endpoints.sandbox
    assert endpoints.hightouch_api_base_url == "http://127.0.0.1:9/hightouch/api/v1"


def test_dagster_loading_the_code_location_names_the_missing_variables() -> None:
    """The real loader (`dagster definitions validate`) in a clean environment."""
    env = {k: v for k, v in os.environ.items() if k not in REAL_SERVICE_VARS}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "activation.definitions",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert "AIRBYTE_REST_API_BASE_URL" in output
    assert "HIGHTOUCH_API_TOKEN" in output


def test_importing_the_definitions_module_does_no_work() -> None:
    """Import alone must not need any setting (no HTTP, no dbt parse at import)."""
    env = {k: v for k, v in os.environ.items() if k not in REAL_SERVICE_VARS}
    completed = subprocess.run(
        [sys.executable, "-c", "import activation.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
