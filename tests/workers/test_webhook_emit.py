"""A campaign event's outbox rows (shared.webhooks.emit) against real Postgres: the endpoints its one statement
chooses are those fnmatch's patterns choose, and each row holds what the deliveries send."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from shared import outbox, webhooks
from shared.db.models import Campaign, OutboxStatus, WebhookDelivery, WebhookEndpoint
from shared.db.session import session_scope
from tests.factories import make_campaign

# Patterns as stored (the API accepts any pattern that matches a known event): LIKE's own wildcards and escape
# character must stay literal, `?` is one character, `[...]` a character class (decided in Python), and an
# unclosed `[` a literal.
PATTERNS: list[list[str]] = [
    ["campaign.*"],
    ["*"],
    [],  # every event
    ["campaign.stage.completed"],
    ["result.*"],
    ["campaign_stage*"],  # `_` is no wildcard: not campaign.stage.*
    ["campaign%"],  # `%` is no wildcard
    ["campaign.stage.complete?"],
    ["*.changes?requested"],
    ["campaign.[sx]tage.*"],
    ["campaign.[!s]tage.*"],
    ["[campaign*"],
    ["campaign\\*"],
    ["result.approved", "campaign.stage.*"],
]
EVENTS = ["campaign.stage.completed", "campaign.completed", "campaign.changes_requested", "result.approved"]


def _endpoints(cid: str) -> tuple[dict[uuid.UUID, list[str]], uuid.UUID, uuid.UUID]:
    """The campaign's tenant's endpoints, one per pattern list (id -> patterns); a disabled endpoint of that tenant
    and an endpoint of another tenant, both subscribed to everything."""
    other = make_campaign()
    with session_scope() as session:
        campaign, stranger = session.get(Campaign, uuid.UUID(cid)), session.get(Campaign, uuid.UUID(other))
        assert campaign is not None and stranger is not None

        def endpoint(tenant_id: uuid.UUID, patterns: list[str], enabled: bool = True) -> WebhookEndpoint:
            row = WebhookEndpoint(
                tenant_id=tenant_id,
                url=f"https://hooks.example/{uuid.uuid4().hex}",
                secret=webhooks.new_secret(),
                event_types=patterns,
                enabled=enabled,
            )
            session.add(row)
            return row

        mine = [endpoint(campaign.tenant_id, p) for p in PATTERNS]
        disabled = endpoint(campaign.tenant_id, ["*"], enabled=False)
        foreign = endpoint(stranger.tenant_id, ["*"])
        session.flush()
        return {e.id: list(e.event_types) for e in mine}, disabled.id, foreign.id


@pytest.mark.parametrize("event_type", EVENTS)
def test_emit_writes_a_row_for_each_endpoint_the_patterns_choose(fresh_db: str, event_type: str) -> None:
    cid = make_campaign(webhook_url="https://campaign.example/hook")
    patterns, disabled, foreign = _endpoints(cid)
    before = outbox.utcnow()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        ids = webhooks.emit(session, campaign, event_type, {"status": "running"})
        expected_payload = webhooks.campaign_payload(campaign, event_type, {"status": "running"})
    with session_scope() as session:
        rows = list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.campaign_id == uuid.UUID(cid))))
        urls = {e.id: e.url for e in session.scalars(select(WebhookEndpoint))}
    assert sorted(ids) == sorted(r.id for r in rows)
    chosen = {r.endpoint_id for r in rows}
    assert chosen == {None} | {e for e, p in patterns.items() if webhooks.subscribes(p, event_type)}
    assert disabled not in chosen and foreign not in chosen
    # fnmatch's answers, spelled out for one event: the translation must not widen `_`, `%` or `\`
    if event_type == "campaign.stage.completed":
        assert sorted(str(patterns[e]) for e in chosen - {None}) == sorted(
            str(p)
            for p in [
                ["campaign.*"],
                ["*"],
                [],
                ["campaign.stage.completed"],
                ["campaign.stage.complete?"],
                ["campaign.[sx]tage.*"],
                ["result.approved", "campaign.stage.*"],
            ]
        )
    [event_id] = {r.event_id for r in rows}
    assert event_id.startswith("msg_")
    for row in rows:
        assert row.url == (urls[row.endpoint_id] if row.endpoint_id else "https://campaign.example/hook")
        assert (row.tenant_id, row.event_type, row.payload) == (rows[0].tenant_id, event_type, expected_payload)
        assert (row.status, row.attempts, row.replay_of) == (OutboxStatus.PENDING, 0, None)
        assert before <= row.next_attempt_at <= outbox.utcnow()
        assert row.leased_until is not None and row.leased_until - row.next_attempt_at > timedelta(seconds=1)
    assert expected_payload["sequence"] == 1


def test_emit_writes_in_the_callers_transaction(fresh_db: str) -> None:
    cid = make_campaign(webhook_url="https://campaign.example/hook")
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        assert len(webhooks.emit(session, campaign, "campaign.completed", {})) == 1
        session.rollback()  # the state change did not happen: neither did its event
    with session_scope() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
