"""Every resource of the code location, defined and bound from the environment in this one module.

Secrets are `EnvVar`s, never literals or run config. `build_resources()` is what
activation/definitions.py binds; the sandbox is selected only by ACTIVATION_SANDBOX_URL.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import dagster as dg
from dagster_airbyte import AirbyteWorkspace
from pydantic import Field

from activation.core.dbt_project import dbt_project
from activation.dagster_api import DbtCliResourceWithoutAdapter
from activation.lib.destinations import load_destinations
from activation.lib.environment import resolve_endpoints, sandbox_url
from activation.lib.hightouch import HightouchClient
from activation.lib.notify import post_json

SLACK_API_BASE_URL = "https://slack.com/api"
SANDBOX_SLACK_API_PATH = "/slack/api"
SLACK_SIGNING_SECRET_VAR = "SLACK_SIGNING_SECRET"
SLACK_BOT_TOKEN_VAR = "SLACK_BOT_TOKEN"


class HightouchResource(dg.ConfigurableResource):
    """The Hightouch workspace the sync assets trigger runs in."""

    api_base_url: str = Field(
        description="Hightouch API base, e.g. https://api.hightouch.com/api/v1"
    )
    api_token: str = Field(
        description="Hightouch API key (bind with EnvVar('HIGHTOUCH_API_TOKEN'))."
    )
    app_url: str = Field(
        default="https://app.hightouch.com", description="Where links to sync runs point."
    )
    connect_timeout_seconds: float = Field(default=10.0, description="TCP connect timeout.")
    read_timeout_seconds: float = Field(default=30.0, description="Read timeout per request.")
    max_retries: int = Field(
        default=5, description="Retries for 429, 5xx and connection errors (never for other 4xx)."
    )
    poll_interval_seconds: float = Field(
        default=0.5,
        description="First delay between reads of a running sync run; it grows while the run "
        "goes on, and reads land near the estimated end once Hightouch reports progress.",
    )
    max_poll_interval_seconds: float = Field(
        default=30.0, description="Longest delay between two reads of a running sync run."
    )
    poll_timeout_seconds: float = Field(
        default=3600.0, description="A run still going after this long fails the step."
    )

    max_requests_per_second: float = Field(
        default=0.0,
        description="Request budget of one sync step (0: no limit), counted as Hightouch counts "
        "it, per 10 s window; a tenth of a window's share may go at once (a step's first "
        "requests do not wait). The code location sets it to the workspace limit (200 requests "
        "per 10 s) divided by the number of destinations: pools let at most one sync per "
        "destination run at once, so all together stay under it.",
    )

    def get_client(self, requests_per_second: float | None = None) -> HightouchClient:
        """A client; `requests_per_second` overrides `max_requests_per_second` (the detached-sync
        sensor spends the shares of the destinations whose runs it follows)."""
        return HightouchClient(
            self.api_base_url,
            self.api_token,
            app_url=self.app_url,
            connect_timeout=self.connect_timeout_seconds,
            read_timeout=self.read_timeout_seconds,
            max_retries=self.max_retries,
            max_requests_per_second=(
                self.max_requests_per_second if requests_per_second is None else requests_per_second
            ),
            poll_interval=self.poll_interval_seconds,
            max_poll_interval=self.max_poll_interval_seconds,
            poll_timeout=self.poll_timeout_seconds,
        )


class WebhookResource(dg.ConfigurableResource):
    """An incoming webhook; its URL carries a secret, so bind it with an EnvVar."""

    webhook_url: str = Field(description="Incoming webhook URL (bind it with an EnvVar).")
    timeout_seconds: float = Field(default=10.0, description="Timeout per attempt.")
    attempts: int = Field(default=3, description="Attempts before the message is given up.")

    what_is_posted: ClassVar[str] = "webhook message"

    def post(self, message: dict) -> None:
        post_json(
            self.webhook_url,
            message,
            timeout=self.timeout_seconds,
            attempts=self.attempts,
            what=self.what_is_posted,
        )


class SlackWebhookResource(WebhookResource):
    """A Slack incoming webhook (EnvVar('SLACK_WEBHOOK_URL')), and optionally the Slack app it
    belongs to: with its signing secret the promote review message carries Approve / Reject
    buttons, whose clicks the intake records and `sign_off` verifies (docs/promotion.md)."""

    what_is_posted: ClassVar[str] = "Slack message"

    signing_secret: str = Field(
        default="",
        description="The Slack app's signing secret (bind EnvVar('SLACK_SIGNING_SECRET')); the "
        "same value as the intake's. Empty: no buttons, decisions by code only.",
    )
    bot_token: str = Field(
        default="",
        description="Slack bot token with usergroups:read (bind EnvVar('SLACK_BOT_TOKEN')); "
        "needed only to allow a Slack user group to decide.",
    )
    api_base_url: str = Field(
        default=SLACK_API_BASE_URL, description="Slack Web API base (the sandbox serves one)."
    )


class TeamsWebhookResource(WebhookResource):
    """A Microsoft Teams incoming webhook (Workflows), EnvVar('TEAMS_WEBHOOK_URL')."""

    what_is_posted: ClassVar[str] = "Teams card"


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_EVENTS_URL_VAR = "PAGERDUTY_EVENTS_URL"
SANDBOX_PAGERDUTY_PATH = "/pagerduty/v2/enqueue"


class PagerDutyResource(dg.ConfigurableResource):
    """PagerDuty Events API v2. The routing keys are per owner and read at run time from the
    variables destinations.yaml names; only the endpoint is configured here."""

    events_url: str = Field(
        default=PAGERDUTY_EVENTS_URL,
        description="Events API v2 enqueue URL (the sandbox serves a stand-in).",
    )
    timeout_seconds: float = Field(default=10.0, description="Timeout per attempt.")
    attempts: int = Field(default=3, description="Attempts before an event is given up.")

    def send(self, event: dict) -> None:
        post_json(
            self.events_url,
            event,
            timeout=self.timeout_seconds,
            attempts=self.attempts,
            what=f"PagerDuty {event.get('event_action', 'event')}",
        )


def pagerduty_events_url() -> str:
    """The sandbox's stand-in when the sandbox is selected, else PAGERDUTY_EVENTS_URL or the
    public endpoint (EU accounts use https://events.eu.pagerduty.com/v2/enqueue)."""
    base = sandbox_url()
    if base:
        return base + SANDBOX_PAGERDUTY_PATH
    return os.environ.get(PAGERDUTY_EVENTS_URL_VAR, "").strip() or PAGERDUTY_EVENTS_URL


def build_dbt_resource() -> DbtCliResourceWithoutAdapter:
    # The dbt installed beside this interpreter, so a run works whether or not the virtualenv's
    # bin folder is on PATH (pytest, the daemon and `dagster dev` are not always started from it).
    # Through `activation-dbt` when installed: it answers dagster-dbt's `dbt --version`, asked
    # before every dbt command, without starting dbt (activation/tooling/dbt_executable.py).
    # Without the dbt adapter dagster-dbt would build in the step's process before each command,
    # for warehouse queries this product never makes (activation/dagster_api.py).
    bin_folder = Path(sys.executable).parent
    launcher, beside_python = bin_folder / "activation-dbt", bin_folder / "dbt"
    executable = next((str(p) for p in (launcher, beside_python) if p.exists()), "dbt")
    return DbtCliResourceWithoutAdapter(
        # DbtCliResource's own __init__ takes a DbtProject; mypy reads a subclass's signature
        # from its (str) config fields instead.
        project_dir=dbt_project,  # type: ignore[arg-type]
        target=dbt_project.target,
        dbt_executable=executable,
        # Plain text: dbt's colour codes would reach the Dagster event log (a failed build's
        # error, the run's logs) as raw ANSI escapes.
        global_config_flags=["--no-use-colors"],
    )


TEAMS_WEBHOOK_URL_VAR = "TEAMS_WEBHOOK_URL"
# The sandbox's Teams sink accepts any path under /teams/webhook/; this one names the feature.
SANDBOX_TEAMS_WEBHOOK_PATH = "/teams/webhook/workflows/activation/promotion"
# Hightouch answers 429 past 200 requests per 10 s per workspace.
HIGHTOUCH_WORKSPACE_REQUESTS_PER_SECOND = 20.0


def _env_secret(name: str) -> dg.EnvVar | str:
    """EnvVar(name) when the variable is set at load, else "" (the feature stays off)."""
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else ""


def build_slack_resource(
    webhook_url_var: str | None, webhook_url: str | None
) -> SlackWebhookResource:
    """The Slack webhook, plus the Slack app's signing secret and bot token when they are set
    (read at load; bound as EnvVars, never as values). The sandbox serves the Web API too."""
    base = sandbox_url()
    return SlackWebhookResource(
        webhook_url=dg.EnvVar(webhook_url_var) if webhook_url_var else webhook_url or "",
        signing_secret=_env_secret(SLACK_SIGNING_SECRET_VAR),
        bot_token=_env_secret(SLACK_BOT_TOKEN_VAR),
        api_base_url=base + SANDBOX_SLACK_API_PATH if base else SLACK_API_BASE_URL,
    )


def build_teams_resource() -> TeamsWebhookResource:
    """The sandbox's Teams sink when the sandbox is selected, else EnvVar TEAMS_WEBHOOK_URL."""
    base = sandbox_url()
    if base:
        return TeamsWebhookResource(webhook_url=base + SANDBOX_TEAMS_WEBHOOK_PATH)
    return TeamsWebhookResource(webhook_url=dg.EnvVar(TEAMS_WEBHOOK_URL_VAR))


def build_airbyte_workspace() -> AirbyteWorkspace:
    endpoints = resolve_endpoints()
    return AirbyteWorkspace(
        rest_api_base_url=endpoints.airbyte_rest_api_base_url,
        configuration_api_base_url=endpoints.airbyte_configuration_api_base_url,
        workspace_id=endpoints.airbyte_workspace_id,
        client_id=dg.EnvVar("AIRBYTE_CLIENT_ID") if endpoints.airbyte_client_id else None,
        client_secret=dg.EnvVar("AIRBYTE_CLIENT_SECRET") if endpoints.airbyte_client_id else None,
        poll_interval=endpoints.poll_interval_seconds,
        # Follow a sync already running for the connection (409 otherwise), and cancel the
        # Airbyte job when Dagster stops waiting, so no job outlives the step that started it.
        poll_timeout=endpoints.airbyte_poll_timeout_seconds,
        poll_previous_running_sync=True,
        cancel_on_termination=True,
    )


def build_resources() -> dict[str, object]:
    """Every resource key the code location's definitions require, bound from the environment
    (loading fails naming each missing variable when the sandbox is not selected)."""
    endpoints = resolve_endpoints()
    destinations = load_destinations()
    return {
        "airbyte": build_airbyte_workspace(),
        "dbt": build_dbt_resource(),
        "hightouch": HightouchResource(
            api_base_url=endpoints.hightouch_api_base_url,
            api_token=dg.EnvVar("HIGHTOUCH_API_TOKEN"),
            app_url=endpoints.hightouch_app_url,
            max_requests_per_second=HIGHTOUCH_WORKSPACE_REQUESTS_PER_SECOND / len(destinations),
        ),
        "slack": build_slack_resource(endpoints.slack_webhook_url_var, endpoints.slack_webhook_url),
        "teams": build_teams_resource(),
        "pagerduty": PagerDutyResource(events_url=pagerduty_events_url()),
    }


@dataclass(frozen=True)
class QualityGate:
    """Which blocking checks gate which sync: for each destination, the blocking checks of every
    asset upstream of its sync asset. Computed once when the code location loads, from the
    assembled definitions (activation/definitions.py).

    Deliberately not a ConfigurableResource: a resource with config can be overridden in a run's
    config from the Launchpad, and an empty map would open every gate. Bound as a plain value, it
    has no config schema, so a run config that names it is refused before the run exists.
    """

    blocking_checks: Mapping[str, Mapping[str, Sequence[str]]]
    """Destination key -> upstream asset -> names of its blocking checks."""
    job_names: Sequence[str]
    """Jobs of this code location: only their runs' check results count."""

    def checks_for(self, destination_key: str) -> dict[dg.AssetKey, list[dg.AssetCheckKey]]:
        upstream = self.blocking_checks.get(destination_key)
        if upstream is None:
            raise KeyError(f"no quality gate computed for destination {destination_key!r}")
        return {
            dg.AssetKey.from_user_string(asset): [
                dg.AssetCheckKey(dg.AssetKey.from_user_string(asset), name) for name in names
            ]
            for asset, names in upstream.items()
        }
