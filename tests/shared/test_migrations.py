"""Migration 0008 moves the loop's bookkeeping out of campaigns.state into campaigns.loop, for campaigns
already in flight, and back on downgrade. Migration 0009 adds the brand's unchecked policy and the results'
fully-checked / needs-review flags, backfilled from the stored verdicts, and removes them on downgrade.
Migration 0010 adds human review: review rounds, decisions, feedback, review links, brand rankers."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shared.db.migrate import alembic_config
from shared.db.session import session_scope
from tests.factories import make_campaign
from workers.engine.flow import Decision, LoopState

OLD_STATE = {
    "_loop": {"attempt": 1, "revision": 0, "decided": {"0": "attempt"}},
    "_announced": ["started:decompose:0", "decompose:0"],
    "plan": {"batches": 2, "layouts": []},
    "caption": {"caption": "a shoe on a street"},
}


def _row(campaign_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with session_scope() as session:
        loop, state = session.execute(
            text("SELECT loop, state FROM campaigns WHERE id = :id"), {"id": uuid.UUID(campaign_id)}
        ).one()
    return loop, state


def test_an_in_flight_campaign_keeps_its_loop_across_the_upgrade(fresh_db: str) -> None:
    cid = make_campaign(state=OLD_STATE)  # as 0007 stored it: bookkeeping inside state
    with session_scope() as session:
        session.execute(text("UPDATE campaigns SET round = 1 WHERE id = :id"), {"id": uuid.UUID(cid)})
    config = alembic_config()
    command.downgrade(config, "0007")
    command.upgrade(config, "head")

    loop, state = _row(cid)
    assert state == {"plan": OLD_STATE["plan"], "caption": OLD_STATE["caption"]}
    parsed = LoopState.model_validate(loop)
    assert parsed.attempt == 1 and parsed.decided == {"0": Decision.ATTEMPT}
    assert parsed.announced == OLD_STATE["_announced"] and parsed.batches == {"1": 2}

    command.downgrade(config, "0007")
    with session_scope() as session:
        (state,) = session.execute(text("SELECT state FROM campaigns WHERE id = :id"), {"id": uuid.UUID(cid)}).one()
    assert state["_announced"] == OLD_STATE["_announced"] and state["_loop"]["decided"] == {"0": "attempt"}
    command.upgrade(config, "head")


def _qc(guidelines: list[tuple[str, str]], failed: list[str] = ()) -> str:  # type: ignore[assignment]
    return json.dumps(
        {
            "verdicts": [
                {"check": "product_exact", "group": "product", "status": "pass", "reason": "exact"},
                {"check": "product_dino", "group": "product", "status": "unchecked", "reason": "not configured"},
                {  # measured, but this brand sets no limit for it: no rule of the brand's, so no reason to review
                    "check": "palette_adherence",
                    "group": "brand",
                    "status": "unchecked",
                    "value": 0.4,
                    "threshold": None,
                    "reason": "not enforced",
                },
            ],
            "guidelines": {"verdicts": [{"guideline": g, "status": s, "reason": f"{g} {s}"} for g, s in guidelines]},
            "policy": {"failed": list(failed), "unchecked": [g for g, s in guidelines if s == "unchecked"]},
        }
    )


def _columns(table: str) -> set[str]:
    with session_scope() as session:
        query = text("SELECT column_name FROM information_schema.columns WHERE table_name = :t")
        return set(session.scalars(query, {"t": table}))


def test_0009_brands_choose_what_unchecked_means_and_old_results_are_backfilled(fresh_db: str) -> None:
    cid = uuid.UUID(make_campaign())
    config = alembic_config()
    command.downgrade(config, "0008")
    assert "unchecked" not in _columns("brands") and "needs_review" not in _columns("results")
    rows = {  # results delivered before 0009: one with an unchecked guideline, one with every rule checked
        "open": _qc([("extra_objects", "unchecked"), ("floating_product", "pass")]),
        "full": _qc([("extra_objects", "pass"), ("floating_product", "pass")]),
    }
    with session_scope() as session:
        tenant = session.scalar(text("SELECT tenant_id FROM campaigns WHERE id = :id"), {"id": cid})
        for rank, (key, qc) in enumerate(rows.items(), start=1):
            cand = uuid.uuid4()
            session.execute(
                text(
                    "INSERT INTO candidates (id, tenant_id, campaign_id, round, batch, layout_key, placement,"
                    " generator, integrity, generation, qc, passed, rank)"
                    " VALUES (:id, :t, :c, 0, 0, :k, '{}', 'compositor', '{}', '{}', CAST(:qc AS jsonb), true, :r)"
                ),
                {"id": cand, "t": tenant, "c": cid, "k": key, "qc": qc, "r": rank},
            )
            session.execute(
                text(
                    "INSERT INTO results (id, tenant_id, campaign_id, candidate_id, rank) VALUES (:i, :t, :c, :d, :r)"
                ),
                {"i": uuid.uuid4(), "t": tenant, "c": cid, "d": cand, "r": rank},
            )
    command.upgrade(config, "head")

    with session_scope() as session:
        assert session.scalar(text("SELECT unchecked FROM brands")) == "review"  # the default for every brand
        found = session.execute(
            text(
                "SELECT c.layout_key, r.fully_checked, r.needs_review, r.review FROM results r"
                " JOIN candidates c ON c.id = r.candidate_id ORDER BY r.rank"
            )
        ).all()
    (_, full_open, review_open, reasons_open), (_, full_full, review_full, reasons_full) = found
    assert (full_open, review_open) == (False, True)
    assert reasons_open == {
        "fallback": False,
        "reasons": [{"check": "extra_objects", "kind": "unchecked", "reason": "extra_objects unchecked"}],
    }  # product_dino (an optional metric, not a rule) is not a reason
    assert (full_full, review_full, reasons_full) == (True, False, {"fallback": False, "reasons": []})
    with pytest.raises(IntegrityError), session_scope() as session:
        session.execute(text("UPDATE brands SET unchecked = 'ignore'"))

    command.downgrade(config, "0008")
    assert "unchecked" not in _columns("brands") and not {"fully_checked", "needs_review", "review"} & _columns(
        "results"
    )
    command.upgrade(config, "head")
    assert {"fully_checked", "needs_review", "review"} <= _columns("results")


def test_0010_delivered_campaigns_await_review_and_results_keep_their_rank_per_review_round(fresh_db: str) -> None:
    cid = uuid.UUID(make_campaign())
    config = alembic_config()
    command.downgrade(config, "0009")
    assert "review_round" not in _columns("results") and "review_state" not in _columns("campaigns")
    with session_scope() as session:
        tenant = session.scalar(text("SELECT tenant_id FROM campaigns WHERE id = :id"), {"id": cid})
        session.execute(text("UPDATE campaigns SET status = 'completed' WHERE id = :id"), {"id": cid})
        cand = uuid.uuid4()
        session.execute(
            text(
                "INSERT INTO candidates (id, tenant_id, campaign_id, round, batch, layout_key, placement,"
                " generator, integrity, generation, qc, passed, rank)"
                " VALUES (:id, :t, :c, 0, 0, 'k', '{}', 'compositor', '{}', '{}', '{}', true, 1)"
            ),
            {"id": cand, "t": tenant, "c": cid},
        )
        session.execute(
            text("INSERT INTO results (id, tenant_id, campaign_id, candidate_id, rank) VALUES (:i, :t, :c, :d, 1)"),
            {"i": uuid.uuid4(), "t": tenant, "c": cid, "d": cand},
        )
    command.upgrade(config, "head")

    insert_result = text(
        "INSERT INTO results (id, tenant_id, campaign_id, candidate_id, review_round, rank)"
        " VALUES (:i, :t, :c, :d, :n, 1)"
    )
    with session_scope() as session:
        assert session.scalar(text("SELECT review_state FROM campaigns WHERE id = :id"), {"id": cid}) == "pending"
        assert session.execute(text("SELECT review_round, decision FROM results")).one() == (0, None)
        assert session.scalar(text("SELECT dam_push FROM brands")) == "on_completion"
        # rank 1 again, in the next review round: allowed; twice in one review round: not
        session.execute(insert_result, {"i": uuid.uuid4(), "t": tenant, "c": cid, "d": cand, "n": 1})
    with pytest.raises(IntegrityError), session_scope() as session:
        session.execute(insert_result, {"i": uuid.uuid4(), "t": tenant, "c": cid, "d": cand, "n": 1})
    with pytest.raises(IntegrityError), session_scope() as session:
        session.execute(text("UPDATE brands SET dam_push = 'never'"))

    command.downgrade(config, "0009")  # keeps the campaign's current review round (0 here): one result per rank
    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM results")) == 1
    assert "review_round" not in _columns("results")
    command.upgrade(config, "head")
    assert {"review_round", "decision", "decided_by", "decided_at"} <= _columns("results")
