"""Resources bound from the environment. Secrets are `EnvVar`s, never literals or run config."""

from __future__ import annotations

from typing import ClassVar

import dagster as dg
from pydantic import Field

from activation.hightouch import HightouchClient
from activation.notify import post_json


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
        description="Request budget of one sync step (0: no limit). The code location sets it "
        "to the workspace limit (200 requests per 10 s) divided by the number of destinations: "
        "pools let at most one sync per destination run at once, so all together stay under it.",
    )

    def get_client(self) -> HightouchClient:
        return HightouchClient(
            self.api_base_url,
            self.api_token,
            app_url=self.app_url,
            connect_timeout=self.connect_timeout_seconds,
            read_timeout=self.read_timeout_seconds,
            max_retries=self.max_retries,
            max_requests_per_second=self.max_requests_per_second,
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
    """A Slack incoming webhook (EnvVar('SLACK_WEBHOOK_URL'))."""

    what_is_posted: ClassVar[str] = "Slack message"
