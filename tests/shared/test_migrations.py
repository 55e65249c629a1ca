"""Migration 0008 moves the loop's bookkeeping out of campaigns.state into campaigns.loop, for campaigns
already in flight, and back on downgrade."""

from __future__ import annotations

import uuid
from typing import Any

from alembic import command
from sqlalchemy import text

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
