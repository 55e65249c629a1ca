"""workers.engine.records: a stage's rows (store_rows: Core upserts, one statement per table) and a fan-out's runs
(get_runs) in a few statements."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete, event, select, update

from shared.db.models import Campaign, Candidate, LlmCall
from shared.db.session import get_engine, session_scope
from tests.factories import make_campaign
from workers.engine.records import store_rows


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *_: object) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)


def _candidates(campaign: Campaign, n: int, qc: dict[str, object] | None = None) -> list[Candidate]:
    return [
        Candidate(
            id=uuid.uuid5(campaign.id, f"0:k{i}"),
            tenant_id=campaign.tenant_id,
            campaign_id=campaign.id,
            layout_key=f"k{i}",
            generation={"adapter": "compositor", "try": 1},
            qc=qc or {},
        )
        for i in range(n)
    ]


def _campaign() -> Campaign:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(make_campaign()))
        assert campaign is not None
        session.expunge(campaign)
        return campaign


def test_new_rows_are_inserted_in_one_statement(fresh_db: str) -> None:
    campaign = _campaign()
    with session_scope() as session, statements() as seen:
        store_rows(session, list(_candidates(campaign, 9)))
        session.flush()
    assert seen == ["INSERT"]  # every row at once, no read first (ON CONFLICT: a retry rewrites them)
    with session_scope() as session:
        assert len(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)).all()) == 9


def test_changed_rows_from_another_session_are_updated_without_a_read(fresh_db: str) -> None:
    campaign = _campaign()
    with session_scope() as session:
        store_rows(session, list(_candidates(campaign, 9)))
    with session_scope() as session:  # what qc does: read in one session, change, hand over detached
        rows = list(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)))
    for i, row in enumerate(rows):
        row.qc, row.passed = {"checked": i}, i % 2 == 0
        row.placement["x"] = i  # changed in place: the ORM's history does not see it
    with session_scope() as session, statements() as seen:
        store_rows(session, list(rows))
        session.flush()
    assert seen == ["UPDATE"]  # one executemany of the changed columns
    with session_scope() as session:
        stored = {
            c.layout_key: c for c in session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id))
        }
    assert [stored[f"k{i}"].qc for i in range(9)] == [{"checked": i} for i in range(9)]
    assert [stored[f"k{i}"].passed for i in range(9)] == [i % 2 == 0 for i in range(9)]
    assert [stored[f"k{i}"].placement for i in range(9)] == [{"x": i} for i in range(9)]
    assert stored["k0"].generation == {"adapter": "compositor", "try": 1}  # what was not handed over is kept


def test_rows_changed_in_different_columns_are_one_update(fresh_db: str) -> None:
    campaign = _campaign()
    with session_scope() as session:
        store_rows(session, _candidates(campaign, 6))
        session.execute(update(Candidate).values(aesthetic=0.25))
    with session_scope() as session:  # what rank does: a rank for some candidates, a reason for others
        rows = sorted(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)), key=_key)
    for i, row in enumerate(rows):
        if i < 3:
            row.rank = i + 1
        else:
            row.excluded_reason = f"near-duplicate of k{i - 3}"
    rows[5].aesthetic = 0.75
    with session_scope() as session, statements() as seen:
        store_rows(session, rows)
    assert seen == ["UPDATE"]
    with session_scope() as session:
        stored = sorted(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)), key=_key)
    assert [r.rank for r in stored] == [1, 2, 3, None, None, None]
    assert [r.excluded_reason for r in stored] == [None] * 3 + [f"near-duplicate of k{i}" for i in range(3)]
    assert [r.aesthetic for r in stored] == [0.25] * 5 + [0.75]  # the others' as they were read


def _key(row: Candidate) -> str:
    return row.layout_key


def test_a_new_row_keeps_the_stored_columns_it_does_not_set(fresh_db: str) -> None:
    campaign = _campaign()
    with session_scope() as session:
        store_rows(session, _candidates(campaign, 1))
        session.execute(update(Candidate).values(rank=3, aesthetic=0.5))
    again = Candidate(
        id=uuid.uuid5(campaign.id, "0:k0"),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        layout_key="k0",
        qc={"again": True},
    )
    with session_scope() as session:
        store_rows(session, [again])
    with session_scope() as session:
        row = session.get(Candidate, again.id)
        assert row is not None and row.qc == {"again": True}
        assert (row.rank, row.aesthetic) == (3, 0.5)  # merge kept them too
        assert row.generation == {"adapter": "compositor", "try": 1}


def test_a_row_of_another_tenant_is_never_overwritten(fresh_db: str) -> None:
    mine, theirs = _campaign(), _campaign()
    with session_scope() as session:
        store_rows(session, _candidates(mine, 2))
    with session_scope() as session:
        loaded = list(session.scalars(select(Candidate).where(Candidate.campaign_id == mine.id)))
    # the same keys, handed over by a task of another tenant: a new row of it and a changed row read as its own
    forged = _candidates(mine, 1, qc={"forged": True})[0]
    forged.tenant_id = theirs.tenant_id
    loaded[1].qc, loaded[1].tenant_id = {"forged": True}, theirs.tenant_id
    with session_scope() as session:
        store_rows(session, [forged])
    with session_scope() as session:
        store_rows(session, [loaded[1]])
    with session_scope() as session:
        rows = session.scalars(select(Candidate).where(Candidate.campaign_id == mine.id)).all()
        assert len(rows) == 2 and {r.tenant_id for r in rows} == {mine.tenant_id}
        assert all(r.qc == {} for r in rows)


def test_a_changed_row_gone_since_it_was_read_is_written_whole(fresh_db: str) -> None:
    campaign = _campaign()
    with session_scope() as session:
        store_rows(session, _candidates(campaign, 2))
    with session_scope() as session:
        rows = list(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)))
    with session_scope() as session:
        session.execute(delete(Candidate).where(Candidate.id == rows[0].id))
    for row in rows:
        row.passed = True
    with session_scope() as session, statements() as seen:
        store_rows(session, rows)
    assert seen == ["UPDATE", "INSERT"]  # one row updated, one not there: upserted with every loaded column
    with session_scope() as session:
        stored = session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)).all()
        assert len(stored) == 2 and all(r.passed for r in stored)
        assert all(r.generation == {"adapter": "compositor", "try": 1} for r in stored)


def test_a_retried_task_rewrites_its_rows_and_mixed_tables_work(fresh_db: str) -> None:
    campaign = _campaign()
    with session_scope() as session:
        store_rows(session, list(_candidates(campaign, 3)))
    again = _candidates(campaign, 4, qc={"second": True})  # same ids (deterministic), new objects, one more row
    call = LlmCall(
        id=uuid.uuid5(campaign.id, "llm:qc:0:0:k0"),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        stage="qc",
        backend="local",
        model="m",
    )
    with session_scope() as session, statements() as seen:
        store_rows(session, [*again, call])
    assert seen == ["INSERT", "INSERT"]  # one per table
    with session_scope() as session, statements() as seen:
        store_rows(session, [*again, call])  # the same task once more: the same rows, none doubled
    with session_scope() as session:
        rows = session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)).all()
        assert len(rows) == 4 and all(r.qc == {"second": True} for r in rows)
        assert session.get(LlmCall, call.id) is not None
        assert len(session.scalars(select(LlmCall).where(LlmCall.campaign_id == campaign.id)).all()) == 1


def test_a_fan_out_creates_its_runs_in_one_query_and_one_insert(fresh_db: str) -> None:
    from workers.engine.records import get_runs

    campaign = _campaign()
    with session_scope() as session, statements() as seen:
        runs = get_runs(session, campaign, "generate", 0, list(range(6)))
    assert seen == ["SELECT", "INSERT"] and [r.item for r in runs] == list(range(6))
    assert all(r.dispatched_at is None for r in runs)  # a GPU stage's runs wait for the dispatcher
    with session_scope() as session, statements() as seen:  # again: found, none created twice
        again = get_runs(session, campaign, "generate", 0, [5, 0, 9])
    assert seen == ["SELECT", "INSERT"] and [r.item for r in again] == [5, 0, 9]
    assert {r.id for r in again[:2]} == {runs[5].id, runs[0].id}
    with session_scope() as session:
        assert get_runs(session, campaign, "generate", 0, []) == []
