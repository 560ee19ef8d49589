"""Signatures on the detached-sync follower's runless events, so forged reports do not count.

The follower (activation/core/detached.py) records its reports outside any run, as every sensor's
`asset_events` are, and so can anyone with the webserver (`/report_asset_materialization/`,
`/report_asset_check/`, `/report_asset_observation/`). Its dedupe reads those reports back: an
unsigned one would let a forger make it skip a real run. Each of its runless events therefore
carries an HMAC-SHA256 over (kind, asset key, Hightouch run id, triggering Dagster run id), keyed
by a key derived from the Hightouch API token, which the sensor and the sync steps already hold
and a webserver user does not. The token itself is never the key, never logged, never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping

import dagster as dg

from activation.core.event_log import metadata_text

SIGNATURE = "activation_signature"
_KEY_LABEL = b"activation-detached-ledger-v1"

# What a signature vouches for: one kind of event per signature, so a signed `reported` mark
# cannot be replayed as a materialization.
MATERIALIZATION = "materialization"
FAILED_ROWS = "failed_rows"
REPORTED = "reported"


class LedgerSigner:
    """Signs and verifies the follower's runless events with a key derived from a token."""

    __slots__ = ("_key",)

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the detached-sync ledger needs the Hightouch API token to sign")
        self._key = hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()

    def __repr__(self) -> str:  # the derived key is a secret as well
        return "LedgerSigner(<key derived from the Hightouch token>)"

    def _signature(
        self, kind: str, key: dg.AssetKey, metadata: Mapping[str, dg.MetadataValue]
    ) -> str:
        fields = [
            kind,
            key.to_user_string(),
            metadata_text(metadata, "hightouch_run_id"),
            metadata_text(metadata, "dagster_run_id"),
        ]
        message = _KEY_LABEL + b"\n" + json.dumps(fields).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(
        self, kind: str, key: dg.AssetKey, metadata: Mapping[str, dg.MetadataValue]
    ) -> dict[str, dg.MetadataValue]:
        """`metadata` with the signature of its `hightouch_run_id` and `dagster_run_id` added."""
        signature = self._signature(kind, key, metadata)
        return {**metadata, SIGNATURE: dg.MetadataValue.text(signature)}

    def verifies(
        self, kind: str, key: dg.AssetKey, metadata: Mapping[str, dg.MetadataValue]
    ) -> bool:
        """The event's metadata carries this signer's signature of it."""
        expected = self._signature(kind, key, metadata)
        return hmac.compare_digest(metadata_text(metadata, SIGNATURE).encode(), expected.encode())
