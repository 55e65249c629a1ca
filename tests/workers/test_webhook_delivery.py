"""Sending outbox rows against real local HTTP receivers (threads): signing (verified with the
`standardwebhooks` library, which we did not write), rotation, v1a, the retry schedule under a
controllable clock, Retry-After, 410, timeouts, disabling a long-failing endpoint, leases and sweeps,
and the SSRF suite through the sender."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update
from standardwebhooks import Webhook, WebhookVerificationError

from shared import outbox, webhooks
from shared.config import get_settings
from shared.db.models import Campaign, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.db.session import session_scope
from tests.factories import FakeDns, Receiver, add_endpoint, make_campaign
from workers.engine import runner
from workers.engine.context import now
from workers.jobs import webhooks as sender


@pytest.fixture
def loopback_ok(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", "127.0.0.0/8")
    get_settings.cache_clear()
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sender, "send", lambda *a: sent.append(a))
    yield sent
    get_settings.cache_clear()


def emit(campaign_id: str, event_type: str = "campaign.completed", **data: Any) -> list[str]:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        return [str(d) for d in webhooks.emit(session, campaign, event_type, {"status": "completed", **data})]


def queue_event(url: str, v1a: bool = False) -> tuple[str, str, str]:
    """A campaign with an endpoint at url and one emitted event; (delivery id, endpoint id, event id)."""
    cid = make_campaign()
    endpoint_id = add_endpoint(cid, url, v1a)
    [delivery_id] = emit(cid)
    return delivery_id, endpoint_id, delivery(delivery_id).event_id


def delivery(delivery_id: str) -> WebhookDelivery:
    with session_scope() as session:
        return session.get(WebhookDelivery, uuid.UUID(delivery_id))


def endpoint(endpoint_id: str) -> WebhookEndpoint:
    with session_scope() as session:
        return session.get(WebhookEndpoint, uuid.UUID(endpoint_id))


def attempts(delivery_id: str) -> list[WebhookAttempt]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == uuid.UUID(delivery_id))
                .order_by(WebhookAttempt.attempt)
            )
        )


def verify(secret: str, headers: dict[str, str], body: str) -> dict[str, Any]:
    return Webhook(secret).verify(body, headers)


# ----------------------------------------------------------------------------- signing


def test_signed_delivery_verifies_with_standardwebhooks(loopback_ok: list[Any]) -> None:
    receiver = Receiver()
    delivery_id, endpoint_id, event_id = queue_event(receiver.url)
    assert sender.deliver(delivery_id) == "delivered"
    headers, body = receiver.requests[0]
    event = verify(endpoint(endpoint_id).secret, headers, body)
    assert event["type"] == "campaign.completed" and headers["webhook-id"] == event_id
    assert event["data"]["sequence"] == 1 and event["data"]["links"]["campaign"].endswith(event["data"]["campaign_id"])
    assert delivery(delivery_id).status == "delivered"
    [logged] = attempts(delivery_id)
    assert (logged.outcome, logged.status_code, logged.attempt) == ("delivered", 200, 1)
    assert logged.latency_ms > 0 and len(logged.response_body) == 2048  # the first 2 kB of a longer answer
    assert sender.deliver(delivery_id) == "skipped"  # a redelivered task sends nothing twice
    assert len(receiver.requests) == 1


def test_v1a_ed25519_signature_verifies_with_the_public_key(loopback_ok: list[Any]) -> None:
    receiver = Receiver()
    delivery_id, endpoint_id, _ = queue_event(receiver.url, v1a=True)
    assert sender.deliver(delivery_id) == "delivered"
    headers, body = receiver.requests[0]
    signatures = dict(s.split(",", 1) for s in headers["webhook-signature"].split(" "))
    assert set(signatures) == {"v1", "v1a"}
    row = endpoint(endpoint_id)
    verify(row.secret, headers, body)  # the v1 signature still satisfies the reference library
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(webhooks.public_key(row.signing_key)[5:]))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    public.verify(base64.b64decode(signatures["v1a"]), signed)  # raises InvalidSignature if wrong
    assert "whsk_" not in row.signing_key  # the private key is stored encrypted


def test_both_secrets_sign_during_a_rotation_then_only_the_new_one(loopback_ok: list[Any]) -> None:
    receiver = Receiver()
    cid = make_campaign()
    endpoint_id = add_endpoint(cid, receiver.url)
    old = endpoint(endpoint_id).secret
    with session_scope() as session:
        webhooks.rotate(session.get(WebhookEndpoint, uuid.UUID(endpoint_id)), now(), grace_seconds=3600)
    new = endpoint(endpoint_id).secret
    assert new != old
    [during] = emit(cid)
    assert sender.deliver(during) == "delivered"
    headers, body = receiver.requests[-1]
    assert verify(old, headers, body) == verify(new, headers, body)  # a receiver on either secret verifies
    [after] = emit(cid)
    assert sender.deliver(after, at=now() + timedelta(hours=1, seconds=5)) == "delivered"
    headers, body = receiver.requests[-1]
    verify(new, headers, body)
    with pytest.raises(WebhookVerificationError):
        verify(old, headers, body)


# ----------------------------------------------------------------------------- retries


class Clock:
    """A controllable clock: the schedule's days pass in milliseconds."""

    def __init__(self) -> None:
        self.t = now()

    def to(self, when: datetime) -> datetime:
        self.t = max(self.t, when)
        return self.t


def test_receiver_back_after_a_three_day_outage_gets_the_event_on_schedule(loopback_ok: list[Any]) -> None:
    """Nine failures (500s, a refused connection's worth of errors) then success: the tenth attempt,
    about 3.3 days after the first, delivers; every wait matches the schedule within its jitter."""
    receiver = Receiver([500] * 9)
    delivery_id, _, event_id = queue_event(receiver.url)
    clock = Clock()
    sent_at = [clock.t]
    assert sender.deliver(delivery_id, at=clock.t) == "retry"  # the send right after commit
    for _ in range(9):
        due = delivery(delivery_id).next_attempt_at
        assert sender.deliver(delivery_id, at=clock.to(due) - timedelta(seconds=2)) == "skipped"  # not yet due
        loopback_ok.clear()
        assert sender.dispatch_due(at=clock.to(due)) == 1 and len(loopback_ok) == 1  # the beat finds it due
        assert sender.dispatch_due(at=clock.t) == 0  # leased: not sent twice
        sent_at.append(clock.t)
        sender.deliver(delivery_id, at=clock.t)
    row = delivery(delivery_id)
    assert (row.status, row.attempts) == ("delivered", 10)
    waits = [(b - a).total_seconds() for a, b in zip(sent_at, sent_at[1:], strict=False)]
    for wait, planned in zip(waits, outbox.SCHEDULE[1:], strict=True):
        assert planned * 0.9 - 1 <= wait <= planned * 1.1 + 1, (wait, planned)
    # The schedule sums to 3.23 days; each wait's jitter may move the total by up to 10 % either way (2.91-3.56 days:
    # a fixed "more than 3 days" failed about once in 300 runs).
    total, planned_total = (sent_at[-1] - sent_at[0]).total_seconds(), sum(outbox.SCHEDULE[1:])
    assert planned_total * (1 - outbox.JITTER) - 9 <= total <= planned_total * (1 + outbox.JITTER) + 9
    assert total / 86400 > 2.9  # a receiver away for three days still gets the event
    assert {h["webhook-id"] for h, _ in receiver.requests} == {event_id}  # one event id across retries
    assert [a.outcome for a in attempts(delivery_id)] == ["retry"] * 9 + ["delivered"]


def test_gives_up_after_the_last_scheduled_attempt(loopback_ok: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONBRAND_WEBHOOK_MAX_ATTEMPTS", "3")
    get_settings.cache_clear()
    receiver = Receiver([500, 503, 500])
    delivery_id, _, _ = queue_event(receiver.url)
    clock = Clock()
    outcomes = [sender.deliver(delivery_id, at=clock.to(delivery(delivery_id).next_attempt_at)) for _ in range(3)]
    assert outcomes == ["retry", "retry", "failed"]
    row = delivery(delivery_id)
    assert (row.attempts, row.last_status_code, row.status) == (3, 500, "failed")
    assert sender.dispatch_due(at=clock.t + timedelta(days=2)) == 0


@pytest.mark.parametrize("header, expected", [("600", 600), ("date", 1800), ("2", 5)])
def test_retry_after_is_honoured_on_429_and_503(loopback_ok: list[Any], header: str, expected: int) -> None:
    at = now()
    value = format_datetime(at + timedelta(seconds=1800), usegmt=True) if header == "date" else header
    status = 503 if header == "date" else 429
    receiver = Receiver([(status, {"Retry-After": value})])
    delivery_id, _, _ = queue_event(receiver.url)
    assert sender.deliver(delivery_id, at=at) == "retry"
    wait = (delivery(delivery_id).next_attempt_at - at).total_seconds()
    # A longer Retry-After wins over the schedule's 5 s; a shorter one does not shorten it.
    assert expected * 0.9 - 2 <= wait <= expected * 1.1 + 2, wait
    assert attempts(delivery_id)[0].retry_in_seconds == round(wait)


def test_410_disables_the_endpoint_and_tells_the_tenant_on_its_other_endpoints(loopback_ok: list[Any]) -> None:
    gone, other = Receiver([410]), Receiver()
    cid = make_campaign()
    gone_id = add_endpoint(cid, gone.url)
    other_id = add_endpoint(cid, other.url, patterns=("*",))
    first, _ = emit(cid)
    second, _ = emit(cid, "campaign.stage.completed")
    assert sender.deliver(first) == "failed"
    row = endpoint(gone_id)
    assert not row.enabled and row.disabled_reason == "the receiver answered 410 Gone"
    assert delivery(second).status == "failed"  # its queued events are not sent to a receiver that left
    [(task, notice_id)] = loopback_ok
    assert task == "onbrand.send_webhook" and sender.deliver(str(notice_id)) == "delivered"
    headers, body = other.requests[-1]
    event = verify(endpoint(other_id).secret, headers, body)
    assert event["type"] == "webhook_endpoint.disabled" and event["data"]["endpoint_id"] == gone_id
    assert len(gone.requests) == 1


def test_an_endpoint_failing_for_five_days_is_disabled(loopback_ok: list[Any]) -> None:
    receiver = Receiver([500] * 50)
    cid = make_campaign()
    endpoint_id = add_endpoint(cid, receiver.url)
    start = now()
    [early] = emit(cid)
    assert sender.deliver(early, at=start) == "retry"
    assert endpoint(endpoint_id).failing_since == start
    [late] = emit(cid)
    assert sender.deliver(late, at=start + timedelta(days=4, hours=23)) == "retry"
    assert endpoint(endpoint_id).enabled
    assert sender.deliver(late, at=start + timedelta(days=5, hours=1)) == "failed"
    row = endpoint(endpoint_id)
    assert not row.enabled and row.disabled_reason == "every delivery failed for 5 days"
    assert delivery(early).status == "failed" and "endpoint disabled" in delivery(late).last_error


def test_a_success_resets_the_failure_clock(loopback_ok: list[Any]) -> None:
    receiver = Receiver([500, 204, 500])
    cid = make_campaign()
    endpoint_id = add_endpoint(cid, receiver.url)
    start = now()
    ids = [emit(cid)[0] for _ in range(3)]
    assert sender.deliver(ids[0], at=start) == "retry"
    assert sender.deliver(ids[1], at=start + timedelta(days=3)) == "delivered"
    assert endpoint(endpoint_id).failing_since is None
    assert sender.deliver(ids[2], at=start + timedelta(days=6)) == "retry"  # failing for 0 days, not 6
    assert endpoint(endpoint_id).enabled


def test_a_hanging_receiver_times_out_and_the_log_leaks_no_address(
    loopback_ok: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONBRAND_WEBHOOK_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    receiver = Receiver([3.0])
    delivery_id, _, _ = queue_event(receiver.url)
    started = time.monotonic()
    assert sender.deliver(delivery_id) == "retry"
    assert time.monotonic() - started < 2.5
    [logged] = attempts(delivery_id)
    assert logged.error.startswith("url_timeout: ") and "127.0.0.1" not in logged.error
    assert logged.status_code is None and logged.response_body is None


def test_private_targets_are_refused_without_the_dev_setting(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender, "send", lambda *a: None)
    receiver = Receiver()
    delivery_id, _, _ = queue_event(receiver.url)
    private = "the URL's host resolves to a private address"
    assert sender.target_refused(receiver.url, get_settings()) == private
    assert sender.target_refused("ftp://example.com/x", get_settings()) == "only http and https URLs are allowed"
    assert sender.deliver(delivery_id) == "retry"
    assert receiver.requests == []  # nothing ever reached the loopback receiver
    assert delivery(delivery_id).last_error == f"url_private_address: {private}"


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "2130706433",
        "metadata.evil.test",
        "intranet.evil.test",
        "mixed.evil.test",
        "v6.evil.test",
        "ula.evil.test",
        "169.254.169.254",
        "100.64.0.1",
        "10.1.2.3",
        "[fe80::1]",
        "[fd00::1]",
        "224.0.0.1",
    ],
)
def test_ssrf_targets_are_never_contacted(
    fresh_db: str, dns: FakeDns, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    """Literal addresses in every spelling and names that resolve into private ranges (fake DNS): the
    sender refuses them all before connecting, and the log says so without naming an address."""
    monkeypatch.setattr(sender, "send", lambda *a: None)
    receiver = Receiver()  # listening on 127.0.0.1: any leak to loopback would show up here
    delivery_id, _, _ = queue_event(f"http://{host}:{receiver.server.server_port}/hook")
    assert sender.deliver(delivery_id) == "retry"
    assert receiver.requests == []
    error = delivery(delivery_id).last_error
    assert error == "url_private_address: the URL's host resolves to a private address"


def test_dns_failure_refuses_and_redirects_are_not_followed(loopback_ok: list[Any], dns: FakeDns) -> None:
    unresolvable, _, _ = queue_event("http://nxdomain.evil.test/hook")
    assert sender.deliver(unresolvable) == "retry"
    assert delivery(unresolvable).last_error.startswith("url_unresolvable: ")
    receiver = Receiver([(307, {"Location": "http://169.254.169.254/latest/meta-data/"})])
    redirected, _, _ = queue_event(receiver.url)
    assert sender.deliver(redirected) == "retry"  # a 3xx is a failed delivery, never a hop to elsewhere
    assert delivery(redirected).last_error == "HTTP 307" and "169.254.169.254" not in dns.calls


def test_two_workers_on_one_delivery_send_it_once(loopback_ok: list[Any]) -> None:
    receiver = Receiver([1.0])  # slow: the second worker arrives while the first holds the row
    delivery_id, _, _ = queue_event(receiver.url)
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.append(sender.deliver(delivery_id))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["delivered", "skipped"] and len(receiver.requests) == 1


# ----------------------------------------------------------------------------- outbox


def test_emitted_rows_are_leased_and_a_lost_send_is_recovered(loopback_ok: list[Any]) -> None:
    delivery_id, _, _ = queue_event("http://127.0.0.1:9/hook")
    assert sender.dispatch_due() == 0  # just emitted: its send after commit is on its way
    later = now() + timedelta(seconds=outbox.lease_seconds(get_settings().webhook_timeout_seconds) + 1)
    assert sender.dispatch_due(at=later) == 1  # that send was lost: the lease lapsed
    assert loopback_ok == [("onbrand.send_webhook", uuid.UUID(delivery_id))]


def test_campaign_events_carry_a_sequence_and_stay_thin(loopback_ok: list[Any]) -> None:
    cid = make_campaign(webhook_url="https://example.com/hook")
    add_endpoint(cid, "https://example.com/other", patterns=("campaign.stage.*",))
    ids = emit(cid, "campaign.stage.started") + emit(cid, "campaign.completed", error={"blocking": ["x" * 50] * 800})
    rows = [delivery(i) for i in ids]
    assert [(r.event_type, r.payload["sequence"]) for r in rows] == [
        ("campaign.stage.started", 1),
        ("campaign.stage.started", 1),
        ("campaign.completed", 2),
    ]
    assert rows[0].event_id == rows[1].event_id  # one event, two receivers
    big = rows[2].payload
    assert big["truncated"] is True and "error" not in big and big["status"] == "completed"
    assert len(webhooks.encode_body("campaign.completed", big, "t")) < webhooks.MAX_PAYLOAD_BYTES
    assert big["progress"] == 1.0 and "progress" not in rows[0].payload  # kept even when thinned


@pytest.mark.parametrize("event_type", sorted(webhooks.TERMINAL_EVENTS))
def test_terminal_events_carry_progress_one(loopback_ok: list[Any], event_type: str) -> None:
    cid = make_campaign(webhook_url="https://example.com/hook")
    [terminal] = emit(cid, event_type, progress=0.6)  # a caller's stale figure does not survive
    assert delivery(terminal).payload["progress"] == 1.0


def test_stalled_campaigns_are_restarted(loopback_ok: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    queued = make_campaign()
    old = now() - timedelta(minutes=5)
    with session_scope() as session:
        session.execute(update(Campaign).where(Campaign.id == uuid.UUID(queued)).values(created_at=old))
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *a: sent.append(a))
    assert runner.restart_stalled() == 1
    assert sent == [("onbrand.decompose", uuid.UUID(queued), 0, 0)]
    with session_scope() as session:
        assert session.scalars(select(Campaign.status).where(Campaign.id == uuid.UUID(queued))).one() == "queued"


def test_retry_after_parsing() -> None:
    at = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert outbox.parse_retry_after("120", at) == 120
    assert outbox.parse_retry_after("Sat, 21 Nov 2026 12:10:00 GMT", at) == 600
    assert outbox.parse_retry_after("Sat, 21 Nov 2026 11:00:00 GMT", at) == 0  # in the past: now
    assert outbox.parse_retry_after("soon", at) is None and outbox.parse_retry_after(None, at) is None
    assert outbox.retry_delay(1, retry_after=10 * 86400) == outbox.MAX_RETRY_AFTER  # no parking for 10 days
