"""Sign-off decisions on promotion runs: recorded and read back through public Dagster APIs only.

Everything lives as observations on one asset, `promotion/approvals`:

- `review_requested`: logged by the promotion run's `request_review` op, and counted only when
  that op of that run wrote it (a record reported from outside the run is ignored, so no one can
  plant a request that blocks the real reviewer). It holds what an approval is bound to: the run
  family, the destination, the staging Hightouch run and counts the reviewers were shown, the
  production sync and the full-resync flag; plus the allow-list, the expiry, and the *verifier*
  of the one-time approval code, never the code: verifier = sha256(proof),
  proof = sha256(run id + code). 120 random bits make the verifier useless for guessing.
- `decision`: an accepted approve/reject, by one of two paths, and the record says which
  (`path`) and whether the identity was verified (`identity_verified`):
  - `code`: written by `activation approve|reject` or the `sign_off_decision` job. It carries the
    proof (which only the code's holder can compute), so the waiting `sign_off` op re-checks it
    and a hand-made observation without the code counts for nothing. The reviewer's name is a
    claim.
  - `slack`: a click on the review message's Approve / Reject button, signed by Slack and
    verified by the intake, then judged and written by the run's own `sign_off` step (the only
    step whose Slack decisions count, as only `request_review` writes requests). It carries the
    Slack user id, name and team id: an identity Slack authenticated.
  Either way the first valid decision wins and every later one is refused.
- `refused`: a decision that broke a rule, with the rule, so the refusal is on record too.

Observations are written with `DagsterInstance.report_runless_asset_event` and read with
`DagsterInstance.fetch_observations`, which work across processes (CLI, other runs, the op).
Reviewer names typed into the CLI or the Launchpad are claims, not identities: open-source
Dagster authenticates no one. The code, posted only in the review channel, proves access to it;
a Slack click proves a Slack identity (see docs/promotion.md, "Trust model").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import dagster as dg

from activation.lib.review_messages import COUNT_NAMES, RunSummary

APPROVALS_KEY = dg.AssetKey(["promotion", "approvals"])
REVIEW_REQUESTED = "review_requested"
DECISION = "decision"
REFUSED = "refused"
PAGE_SIZE = 200
TAG_PREFIX = "activation/sign_off"
REVIEW_STEP = "request_review"  # the only step whose records count as a run's review request
SIGN_OFF_STEP = "sign_off"  # the only step whose Slack decisions count
CODE_PATH = "code"
SLACK_PATH = "slack"


class Verdict(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"

    @property
    def done(self) -> str:
        """`Approved` / `Rejected`, as messages and records say it."""
        return "Approved" if self is Verdict.APPROVE else "Rejected"


class DecisionRefused(RuntimeError):
    """A decision broke a rule; the message says which. The refusal has been recorded."""


@dataclass(frozen=True)
class SlackIdentity:
    """Who clicked, as Slack reported it in a request signed with the app's signing secret."""

    user_id: str
    user_name: str
    team_id: str

    @property
    def handle(self) -> str:
        return f"@{self.user_name}"

    def metadata(self) -> dict[str, Any]:
        return {
            "slack_user_id": self.user_id,
            "slack_user_name": self.user_name,
            "slack_team_id": self.team_id,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> SlackIdentity | None:
        if not meta.get("slack_user_id"):
            return None
        return cls(
            str(meta["slack_user_id"]),
            str(meta.get("slack_user_name", "")),
            str(meta.get("slack_team_id", "")),
        )


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


# -- the one-time code ---------------------------------------------------------------------------


def new_approval_code() -> str:
    """120 random bits as 24 base32 characters in groups of four (easy to copy, no `-` first)."""
    raw = base64.b32encode(secrets.token_bytes(15)).decode()
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def code_proof(promotion_run_id: str, code: str) -> str:
    """What a decision carries: only someone holding the code can compute it for this run."""
    normalized = "".join(code.split()).replace("-", "").upper()
    return hashlib.sha256(
        f"activation-sign-off:{promotion_run_id}:{normalized}".encode()
    ).hexdigest()


def code_verifier(proof: str) -> str:
    """What the review request stores: checks a proof without allowing one to be derived."""
    return hashlib.sha256(f"activation-verifier:{proof}".encode()).hexdigest()


def proof_matches(proof: str, verifier: str) -> bool:
    return bool(proof) and hmac.compare_digest(code_verifier(proof), verifier)


# -- records ---------------------------------------------------------------------------------------


def _staging_metadata(staging: RunSummary) -> dict[str, Any]:
    """The staging run reviewers were shown, as both records store it (`staging_*`)."""
    return {
        "staging_sync_id": staging.sync_id,
        "staging_run_id": staging.run_id,
        "staging_run_url": dg.MetadataValue.url(staging.run_url),
        "staging_status": staging.status,
        **{f"staging_{name}": value for name, value in staging.counts.items()},
    }


def _names(value: object) -> tuple[str, ...]:
    return tuple(n.strip() for n in str(value or "").split(",") if n.strip())


@dataclass(frozen=True)
class ReviewRequest:
    """What `request_review` asked reviewers to decide on, for one promotion run."""

    promotion_run_id: str
    staging: RunSummary
    production_sync: str
    """The production Hightouch sync id the approval may trigger."""
    verifier: str
    allowed_reviewers: tuple[str, ...]
    requested_at: float
    expires_at: float
    destination: str = ""
    run_family: str = ""
    """Root run id of the promote run: re-executions share it, and so share one approval."""
    full_resync: bool = False
    slack_buttons: bool = False
    """Whether the Slack message carried Approve / Reject buttons (Slack decisions possible)."""
    slack_reviewer_ids: tuple[str, ...] = ()
    slack_reviewer_group: str = ""
    slack_group_members: tuple[str, ...] = ()
    """Members of `slack_reviewer_group` when the review was requested (they may click)."""
    require_verified_identity: bool = False
    """Only Slack decisions count; the code path is refused."""

    @property
    def slack_allow_list(self) -> bool:
        return bool(self.slack_reviewer_ids or self.slack_reviewer_group)

    def slack_allowed(self) -> str:
        names = list(self.slack_reviewer_ids)
        if self.slack_reviewer_group:
            names.append(f"members of {self.slack_reviewer_group}")
        return ", ".join(names)

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": REVIEW_REQUESTED,
            "promotion_run_id": self.promotion_run_id,
            "run_family": self.run_family,
            "destination": self.destination,
            **_staging_metadata(self.staging),
            "production_sync": self.production_sync,
            "full_resync": self.full_resync,
            "code_verifier": self.verifier,
            "allowed_reviewers": ", ".join(self.allowed_reviewers) or "(anyone with the code)",
            "requested_at": utc_text(self.requested_at),
            "requested_at_ts": self.requested_at,
            "expires_at": utc_text(self.expires_at),
            "expires_at_ts": self.expires_at,
            "slack_buttons": self.slack_buttons,
            "slack_reviewer_ids": ", ".join(self.slack_reviewer_ids),
            "slack_reviewer_group": self.slack_reviewer_group,
            "slack_group_members": ", ".join(self.slack_group_members),
            "require_verified_identity": self.require_verified_identity,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ReviewRequest:
        allowed = str(meta["allowed_reviewers"])
        return cls(
            promotion_run_id=str(meta["promotion_run_id"]),
            staging=RunSummary(
                sync_id=str(meta["staging_sync_id"]),
                run_id=str(meta["staging_run_id"]),
                run_url=str(meta["staging_run_url"]),
                status=str(meta["staging_status"]),
                **{name: int(meta[f"staging_{name}"]) for name in COUNT_NAMES},
            ),
            production_sync=str(meta["production_sync"]),
            verifier=str(meta["code_verifier"]),
            allowed_reviewers=()
            if allowed.startswith("(")
            else tuple(n.strip() for n in allowed.split(",")),
            requested_at=float(meta["requested_at_ts"]),
            expires_at=float(meta["expires_at_ts"]),
            destination=str(meta.get("destination", "")),
            run_family=str(meta.get("run_family", "")),
            full_resync=bool(meta.get("full_resync", False)),
            slack_buttons=bool(meta.get("slack_buttons", False)),
            slack_reviewer_ids=_names(meta.get("slack_reviewer_ids")),
            slack_reviewer_group=str(meta.get("slack_reviewer_group", "")),
            slack_group_members=_names(meta.get("slack_group_members")),
            require_verified_identity=bool(meta.get("require_verified_identity", False)),
        )

    def binding_problem(
        self, *, run_family: str, destination: str, production_sync: str, full_resync: bool
    ) -> str | None:
        """Why this approval does not cover the production sync about to run, or None."""
        approved = (
            f"approved: promote run family {self.run_family}, destination {self.destination}, "
            f"production sync {self.production_sync}, full_resync={self.full_resync}"
        )
        asked = (
            f"asked now: family {run_family}, destination {destination}, production sync "
            f"{production_sync}, full_resync={full_resync}"
        )
        if (run_family, destination, production_sync, full_resync) != (
            self.run_family,
            self.destination,
            self.production_sync,
            self.full_resync,
        ):
            return f"the approval does not cover this production sync ({approved}; {asked})"
        return None


@dataclass(frozen=True)
class Decision:
    """An approve or reject of one promotion run, as recorded."""

    decision_id: str
    promotion_run_id: str
    verdict: Verdict
    reviewer: str
    decided_at: float
    note: str
    """The comment of an approval or the reason of a rejection."""
    staging: RunSummary
    """The staging run and counts the reviewer was shown (from the review request)."""
    source: str
    proof: str = ""
    destination: str = ""
    """What the approval covers, copied from the review request for the audit trail."""
    production_sync: str = ""
    full_resync: bool = False
    slack: SlackIdentity | None = None
    """Set for a Slack decision: the identity Slack authenticated (path `slack`)."""

    @property
    def decided_at_utc(self) -> str:
        return utc_text(self.decided_at)

    @property
    def path(self) -> str:
        return SLACK_PATH if self.slack is not None else CODE_PATH

    @property
    def identity_verified(self) -> bool:
        return self.slack is not None

    def who(self) -> str:
        """The decider as messages name them: `@alice (Slack U0ALICE)` or `alice`."""
        if self.slack is None:
            return self.reviewer
        return f"{self.slack.handle} (Slack {self.slack.user_id})"

    def metadata(self) -> dict[str, Any]:
        """Observation metadata; also what the promotion run shows as the sign-off."""
        return {
            "kind": DECISION,
            "decision_id": self.decision_id,
            "promotion_run_id": self.promotion_run_id,
            "decision": self.verdict.value,
            "reviewer": self.reviewer,
            "decided_at": self.decided_at_utc,
            "decided_at_ts": self.decided_at,
            "comment" if self.verdict is Verdict.APPROVE else "reason": self.note,
            **_staging_metadata(self.staging),
            "destination": self.destination,
            "production_sync": self.production_sync,
            "full_resync": self.full_resync,
            "source": self.source,
            "path": self.path,
            "identity_verified": self.identity_verified,
            **(self.slack.metadata() if self.slack else {}),
            "proof": self.proof,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Decision:
        return cls(
            decision_id=str(meta.get("decision_id", "")),
            promotion_run_id=str(meta.get("promotion_run_id", "")),
            verdict=Verdict(str(meta.get("decision"))),
            reviewer=str(meta.get("reviewer", "")),
            decided_at=float(meta.get("decided_at_ts", 0.0)),
            note=str(meta.get("comment", meta.get("reason", ""))),
            staging=RunSummary(
                sync_id=str(meta.get("staging_sync_id", "")),
                run_id=str(meta.get("staging_run_id", "")),
                run_url=str(meta.get("staging_run_url", "")),
                status=str(meta.get("staging_status", "")),
                **{name: int(meta.get(f"staging_{name}", 0)) for name in COUNT_NAMES},
            ),
            source=str(meta.get("source", "")),
            proof=str(meta.get("proof", "")),
            destination=str(meta.get("destination", "")),
            production_sync=str(meta.get("production_sync", "")),
            full_resync=bool(meta.get("full_resync", False)),
            slack=SlackIdentity.from_metadata(meta) if meta.get("path") == SLACK_PATH else None,
        )


@dataclass(frozen=True)
class Entry:
    """One approvals observation: when the instance stored it, and its plain metadata."""

    storage_id: int
    timestamp: float
    kind: str
    meta: dict[str, Any]
    run_id: str = ""
    """The run that wrote it; empty for a report from outside any run (CLI, API)."""
    step_key: str = ""


# -- the rules (pure) ----------------------------------------------------------------------------


def refusal(
    request: ReviewRequest,
    *,
    verdict: Verdict,
    reviewer: str,
    note: str,
    staging_run_id: str,
    proof: str,
    at: float,
    earlier: Decision | None,
    slack: SlackIdentity | None = None,
) -> str | None:
    """Why this decision must be refused, or None when every rule holds. `slack` is the verified
    identity of a Slack click (then no code is needed); without it the code path's rules apply."""
    run = request.promotion_run_id
    if earlier is not None:
        return (
            f"promotion run {run} was already decided: {earlier.verdict.value} by "
            f"{earlier.reviewer} at {earlier.decided_at_utc}; a second decision is refused"
        )
    if at > request.expires_at:
        return f"approval expired at {utc_text(request.expires_at)} for promotion run {run}"
    if staging_run_id != request.staging.run_id:
        return (
            f"staging run {staging_run_id} is not the one under review for promotion run {run} "
            f"(staging run {request.staging.run_id}); decide on the current review message"
        )
    if not reviewer.strip():
        return "reviewer: give the name of the person deciding"
    if verdict is Verdict.REJECT and not note.strip():
        return "reason: a rejection must say why"
    if slack is not None:
        return _slack_refusal(request, slack)
    if request.require_verified_identity:
        return (
            f"promotion run {run} accepts only Slack decisions (a verified identity); click "
            "Approve or Reject in the review message"
        )
    allowed = {name.casefold() for name in request.allowed_reviewers}
    if allowed and reviewer.strip().casefold() not in allowed:
        return (
            f"reviewer {reviewer!r} is not allowed to decide on promotion run {run} "
            f"(allowed: {', '.join(request.allowed_reviewers)})"
        )
    if not proof:
        return "approval code: missing; use the code from the review message"
    if not proof_matches(proof, request.verifier):
        return f"approval code: wrong code for promotion run {run}"
    return None


def _slack_refusal(request: ReviewRequest, slack: SlackIdentity) -> str | None:
    run = request.promotion_run_id
    if not request.slack_buttons:
        return f"promotion run {run} was not offered to Slack buttons; decide with the code"
    if request.slack_allow_list:
        allowed = {*request.slack_reviewer_ids, *request.slack_group_members}
        if slack.user_id not in allowed:
            return (
                f"Slack user {slack.handle} ({slack.user_id}) is not allowed to decide on "
                f"promotion run {run} (allowed: {request.slack_allowed()})"
            )
    elif request.allowed_reviewers:
        return (
            f"promotion run {run} names its reviewers but no Slack identities "
            f"({', '.join(request.allowed_reviewers)}); decide with the code"
        )
    return None


def latest_request(entries: Sequence[Entry], promotion_run_id: str) -> ReviewRequest | None:
    # Only the run's own request_review step writes its request: a record reported from outside
    # the run, or by another run, naming this run is a forgery and is ignored.
    requests = [
        e
        for e in entries
        if e.kind == REVIEW_REQUESTED
        and e.meta.get("promotion_run_id") == promotion_run_id
        and e.run_id == promotion_run_id
        and e.step_key == REVIEW_STEP
    ]
    return ReviewRequest.from_metadata(requests[-1].meta) if requests else None


def judged_decisions(
    request: ReviewRequest, entries: Sequence[Entry]
) -> list[tuple[Entry, Decision | None, str | None]]:
    """Each decision recorded for the run, oldest first, with the decision or why it is void.

    A decision counts only if it passes every rule at the time the instance stored it, and
    only the first that counts is the decision; that is what makes the code one-time.
    """
    judged: list[tuple[Entry, Decision | None, str | None]] = []
    first: Decision | None = None
    for entry in entries:
        if entry.kind != DECISION or entry.meta.get("promotion_run_id") != request.promotion_run_id:
            continue
        if entry.storage_id <= 0 or entry.timestamp < request.requested_at - 1:
            continue
        try:
            decision = Decision.from_metadata(entry.meta)
        except (ValueError, KeyError) as error:
            judged.append((entry, None, f"malformed decision record ({error})"))
            continue
        slack_decision = entry.meta.get("path") == SLACK_PATH
        if slack_decision and (
            decision.slack is None
            or entry.run_id != request.promotion_run_id
            or entry.step_key != SIGN_OFF_STEP
        ):
            # Only the run's own sign_off verifies a click; a record claiming one from anywhere
            # else is a forgery.
            judged.append((entry, None, "a Slack decision not recorded by this run's sign_off"))
            continue
        problem = refusal(
            request,
            verdict=decision.verdict,
            reviewer=decision.reviewer,
            note=decision.note,
            staging_run_id=decision.staging.run_id,
            proof=decision.proof,
            at=entry.timestamp,
            earlier=first,
            slack=decision.slack if slack_decision else None,
        )
        if problem is None:
            first = decision
        judged.append((entry, decision if problem is None else None, problem))
    return judged


def first_decision(request: ReviewRequest, entries: Sequence[Entry]) -> Decision | None:
    return next((d for _, d, _ in judged_decisions(request, entries) if d is not None), None)


# -- reading and writing through the instance ----------------------------------------------------


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, dg.MetadataValue) else value


def read_entries(instance: dg.DagsterInstance, *, since: float) -> list[Entry]:
    """Approvals observations stored after `since` (epoch seconds), oldest first."""
    entries: list[Entry] = []
    cursor: str | None = None
    records_filter = dg.AssetRecordsFilter(asset_key=APPROVALS_KEY, after_timestamp=since)
    while True:
        result = instance.fetch_observations(
            records_filter, limit=PAGE_SIZE, cursor=cursor, ascending=True
        )
        for record in result.records:
            observation = record.asset_observation
            if observation is None:
                continue
            meta = {k: _plain(v) for k, v in observation.metadata.items()}
            log_entry = record.event_log_entry
            entries.append(
                Entry(
                    record.storage_id,
                    record.timestamp,
                    str(meta.get("kind", "")),
                    meta,
                    run_id=log_entry.run_id or "",
                    step_key=log_entry.step_key or "",
                )
            )
        if not result.has_more:
            return entries
        cursor = result.cursor


def review_request_observation(request: ReviewRequest) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=APPROVALS_KEY,
        description=f"Review requested for promotion run {request.promotion_run_id}",
        metadata=request.metadata(),
    )


def decision_observation(decision: Decision) -> dg.AssetObservation:
    """A Slack decision as `sign_off` records it, from inside the run (see `judged_decisions`)."""
    return dg.AssetObservation(
        asset_key=APPROVALS_KEY,
        description=f"{decision.verdict.done} by {decision.who()}: promotion run "
        f"{decision.promotion_run_id}",
        metadata=decision.metadata(),
    )


def slack_refusal_observation(
    promotion_run_id: str, verdict: Verdict, slack: SlackIdentity, reason: str, source: str
) -> dg.AssetObservation:
    """A Slack click that broke a rule, recorded by `sign_off` with the verified identity."""
    return dg.AssetObservation(
        asset_key=APPROVALS_KEY,
        description=f"Refused {verdict.value} of promotion run {promotion_run_id} by "
        f"{slack.handle}",
        metadata={
            "kind": REFUSED,
            "promotion_run_id": promotion_run_id,
            "decision": verdict.value,
            "reviewer": slack.handle,
            "refused_at": utc_text(time.time()),
            "refusal": reason,
            "source": source,
            "path": SLACK_PATH,
            "identity_verified": True,
            **slack.metadata(),
        },
    )


def _report(instance: dg.DagsterInstance, description: str, metadata: dict[str, Any]) -> None:
    instance.report_runless_asset_event(
        dg.AssetObservation(asset_key=APPROVALS_KEY, description=description, metadata=metadata)
    )


def _refuse(
    instance: dg.DagsterInstance,
    *,
    promotion_run_id: str,
    verdict: Verdict,
    reviewer: str,
    source: str,
    reason: str,
) -> DecisionRefused:
    """Record the refusal (never with the code or its proof) and return the error to raise."""
    _report(
        instance,
        f"Refused {verdict.value} of promotion run {promotion_run_id} by {reviewer}",
        {
            "kind": REFUSED,
            "promotion_run_id": promotion_run_id,
            "decision": verdict.value,
            "reviewer": reviewer,
            "refused_at": utc_text(time.time()),
            "refusal": reason,
            "source": source,
            "path": CODE_PATH,
            "identity_verified": False,
        },
    )
    return DecisionRefused(f"refused: {reason}")


def record_decision(
    instance: dg.DagsterInstance,
    *,
    promotion_run_id: str,
    verdict: Verdict,
    reviewer: str,
    code: str,
    note: str = "",
    staging_run_id: str | None = None,
    source: str,
) -> Decision:
    """Check a decision against every rule and record it; raises `DecisionRefused` otherwise.

    `staging_run_id` is the staging Hightouch run the reviewer decided on (from the review
    message); None takes the one under review. `source` says where the decision came from
    ("cli", "sign_off_decision run <id>"). Both ways of deciding end here, so they record alike.
    """
    promotion_run_id = promotion_run_id.strip()
    refuse: dict[str, Any] = dict(
        promotion_run_id=promotion_run_id, verdict=verdict, reviewer=reviewer, source=source
    )
    record = instance.get_run_record_by_id(promotion_run_id) if promotion_run_id else None
    if record is None:
        raise _refuse(instance, **refuse, reason=f"no Dagster run {promotion_run_id!r}")
    since = record.create_timestamp.timestamp() - 1
    entries = read_entries(instance, since=since)
    request = latest_request(entries, promotion_run_id)
    if request is None:
        raise _refuse(
            instance,
            **refuse,
            reason=f"run {promotion_run_id} has not requested a review (is it a `promote` run "
            "that reached sign_off?)",
        )
    earlier = first_decision(request, entries)
    if record.dagster_run.is_finished and earlier is None:
        raise _refuse(
            instance,
            **refuse,
            reason=f"promotion run {promotion_run_id} has already ended "
            f"({record.dagster_run.status.value}); nothing is waiting for a decision",
        )
    proof = code_proof(promotion_run_id, code) if code.strip() else ""
    problem = refusal(
        request,
        verdict=verdict,
        reviewer=reviewer,
        note=note,
        staging_run_id=(staging_run_id or request.staging.run_id).strip(),
        proof=proof,
        at=time.time(),
        earlier=earlier,
    )
    if problem is not None:
        raise _refuse(instance, **refuse, reason=problem)
    decision = Decision(
        decision_id=uuid.uuid4().hex,
        promotion_run_id=promotion_run_id,
        verdict=verdict,
        reviewer=reviewer.strip(),
        decided_at=time.time(),
        note=note.strip(),
        staging=request.staging,
        source=source,
        proof=proof,
        destination=request.destination,
        production_sync=request.production_sync,
        full_resync=request.full_resync,
    )
    _report(
        instance,
        f"{verdict.done} by {decision.reviewer}: promotion run {promotion_run_id}",
        decision.metadata(),
    )
    # Two deciders racing both pass the check above; the stored order settles it.
    winner = first_decision(request, read_entries(instance, since=since))
    if winner is None or winner.decision_id != decision.decision_id:
        other = f"{winner.verdict.value} by {winner.reviewer}" if winner else "unknown"
        raise _refuse(
            instance,
            **refuse,
            reason=f"promotion run {promotion_run_id} was decided first by another decision "
            f"({other}); this one does not count",
        )
    return decision


def verified_approval(instance: dg.DagsterInstance, approval: Decision) -> ReviewRequest:
    """The review request an approval answers, re-read from the records; raises
    `DecisionRefused` unless the records hold that very approval as the run's first valid
    decision. The production step calls it instead of trusting the value handed to it, so an
    approval is only ever what the approvals asset says was decided."""
    run_id = approval.promotion_run_id
    record = instance.get_run_record_by_id(run_id) if run_id else None
    if record is None:
        raise DecisionRefused(f"no Dagster run {run_id!r} holds the review this approval answers")
    entries = read_entries(instance, since=record.create_timestamp.timestamp() - 1)
    request = latest_request(entries, run_id)
    if request is None:
        raise DecisionRefused(f"promotion run {run_id} has no review request of its own")
    decision = first_decision(request, entries)
    if decision is None or decision.decision_id != approval.decision_id:
        raise DecisionRefused(
            f"the approval handed to this step is not the recorded decision of promotion run "
            f"{run_id}"
        )
    if decision.verdict is not Verdict.APPROVE:
        raise DecisionRefused(f"promotion run {run_id} was rejected by {decision.reviewer}")
    return request


def public_metadata(decision: Decision) -> dict[str, Any]:
    """The decision as runs show it (the proof stays in the approvals record only)."""
    metadata = decision.metadata()
    metadata.pop("proof")
    metadata["kind"] = "sign_off"
    return metadata


def decision_tags(decision: Decision) -> dict[str, str]:
    """Run tags naming who decided, what and when (the comment or reason is in metadata)."""
    return {
        f"{TAG_PREFIX}/decision": decision.verdict.value,
        f"{TAG_PREFIX}/reviewer": decision.reviewer[:200],
        f"{TAG_PREFIX}/decided_at": decision.decided_at_utc,
        f"{TAG_PREFIX}/staging_run_id": decision.staging.run_id,
        f"{TAG_PREFIX}/path": decision.path,
        f"{TAG_PREFIX}/identity_verified": str(decision.identity_verified).lower(),
        **({f"{TAG_PREFIX}/slack_user_id": decision.slack.user_id} if decision.slack else {}),
    }
