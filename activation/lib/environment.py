"""Which services the code location talks to: real SaaS endpoints, or the local sandbox.

The sandbox is used only when `ACTIVATION_SANDBOX_URL` is set. Otherwise every URL and credential
comes from its own environment variable and a missing one fails loudly, naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SANDBOX_URL_VAR = "ACTIVATION_SANDBOX_URL"

# The sandbox serves every stand-in under one origin; these prefixes are its URL layout. The
# sandbox imports them from here, so the product and the stand-ins cannot disagree.
SANDBOX_AIRBYTE_REST_PREFIX = "/airbyte/api/public/v1"
SANDBOX_AIRBYTE_CONFIG_PREFIX = "/airbyte/api/v1"
SANDBOX_HIGHTOUCH_PREFIX = "/hightouch/api/v1"
SANDBOX_SLACK_WEBHOOK_PATH = "/slack/services/T0SANDBOX/B0SANDBOX/sandboxwebhook"
SANDBOX_AIRBYTE_WORKSPACE_ID = "5ae6b09b-fdec-41af-aaf7-7d94cfc33ef6"
SANDBOX_AIRBYTE_CONNECTION_ID = "9924bcd0-99be-453d-ba47-c2c9766f7da5"

HIGHTOUCH_DEFAULT_BASE_URL = "https://api.hightouch.com/api/v1"
HIGHTOUCH_APP_DEFAULT_URL = "https://app.hightouch.com"


class MissingSettingError(RuntimeError):
    """A required environment variable is not set; the message names every missing one."""


@dataclass(frozen=True)
class Endpoints:
    """Where each service lives. Secrets are not here: they stay `EnvVar`s on the resources."""

    sandbox: bool
    airbyte_rest_api_base_url: str
    airbyte_configuration_api_base_url: str
    airbyte_workspace_id: str
    hightouch_api_base_url: str
    hightouch_app_url: str
    slack_webhook_url_var: str | None
    """Variable holding the Slack webhook URL (a secret); None in the sandbox."""
    slack_webhook_url: str | None = None
    """The sandbox's Slack stand-in URL (not a secret); None for the real Slack."""
    airbyte_client_id: bool = False
    """Whether AIRBYTE_CLIENT_ID / AIRBYTE_CLIENT_SECRET are set (OAuth to Airbyte)."""
    poll_interval_seconds: float = 2.0
    airbyte_poll_timeout_seconds: float = 3 * 3600.0
    """ACTIVATION_AIRBYTE_POLL_TIMEOUT_SECONDS: past it the Airbyte job is cancelled."""


def sandbox_url() -> str | None:
    value = os.environ.get(SANDBOX_URL_VAR, "").strip()
    return value.rstrip("/") or None


def require(*names: str) -> dict[str, str]:
    """Values of the named variables; raises naming all of those that are unset or empty."""
    missing = [name for name in names if not os.environ.get(name, "").strip()]
    if missing:
        raise MissingSettingError(
            "activation needs these environment variables, which are not set: "
            + ", ".join(missing)
            + f". Set them (see README, 'Pointing at real services'), or set {SANDBOX_URL_VAR} "
            "to run against the local sandbox (`activation sandbox --port N`)."
        )
    return {name: os.environ[name].strip() for name in names}


def resolve_endpoints() -> Endpoints:
    """Endpoints in force; raises `MissingSettingError` naming what is missing."""
    base = sandbox_url()
    if base:
        require("HIGHTOUCH_API_TOKEN")
        return Endpoints(
            sandbox=True,
            airbyte_rest_api_base_url=base + SANDBOX_AIRBYTE_REST_PREFIX,
            airbyte_configuration_api_base_url=base + SANDBOX_AIRBYTE_CONFIG_PREFIX,
            airbyte_workspace_id=SANDBOX_AIRBYTE_WORKSPACE_ID,
            hightouch_api_base_url=base + SANDBOX_HIGHTOUCH_PREFIX,
            hightouch_app_url=base + "/hightouch/app",
            slack_webhook_url_var=None,
            slack_webhook_url=base + SANDBOX_SLACK_WEBHOOK_PATH,
            poll_interval_seconds=0.25,
            airbyte_poll_timeout_seconds=_seconds("ACTIVATION_AIRBYTE_POLL_TIMEOUT_SECONDS", 600),
        )
    values = require(
        "AIRBYTE_REST_API_BASE_URL",
        "AIRBYTE_CONFIGURATION_API_BASE_URL",
        "AIRBYTE_WORKSPACE_ID",
        "HIGHTOUCH_API_TOKEN",
        "SLACK_WEBHOOK_URL",
    )
    return Endpoints(
        sandbox=False,
        airbyte_rest_api_base_url=values["AIRBYTE_REST_API_BASE_URL"],
        airbyte_configuration_api_base_url=values["AIRBYTE_CONFIGURATION_API_BASE_URL"],
        airbyte_workspace_id=values["AIRBYTE_WORKSPACE_ID"],
        hightouch_api_base_url=os.environ.get("HIGHTOUCH_API_BASE_URL", "").strip()
        or HIGHTOUCH_DEFAULT_BASE_URL,
        hightouch_app_url=os.environ.get("HIGHTOUCH_APP_URL", "").strip()
        or HIGHTOUCH_APP_DEFAULT_URL,
        slack_webhook_url_var="SLACK_WEBHOOK_URL",
        airbyte_client_id=_airbyte_oauth(),
        airbyte_poll_timeout_seconds=_seconds("ACTIVATION_AIRBYTE_POLL_TIMEOUT_SECONDS", 3 * 3600),
    )


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise MissingSettingError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise MissingSettingError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _airbyte_oauth() -> bool:
    """OAuth to Airbyte when a client id is set; then its secret is required too."""
    if not os.environ.get("AIRBYTE_CLIENT_ID", "").strip():
        return False
    require("AIRBYTE_CLIENT_SECRET")
    return True
