"""shared.db.json_columns: the JSON columns' codec (orjson) writes what the standard library's encoder wrote, and
Postgres gives it back through the engine."""

from __future__ import annotations

import enum
import json
import math
import uuid

import numpy as np
import pytest
from sqlalchemy import select

from shared.db import json_columns
from shared.db.models import Campaign, Candidate
from shared.db.session import session_scope
from tests.factories import make_campaign
from workers.engine.records import store_rows


class Kind(enum.StrEnum):
    CHECK = "check"


class Level(enum.IntEnum):
    HIGH = 2


# What stage code puts in a candidate's columns: nested dicts and lists, enums, numpy's float64 (a float subclass),
# tuples, keys that are not strings.
VALUE = {
    "metrics": {"ssim": np.float64(0.97), "phash": "c3c3", "dino_cosine": None, "n": 3},
    "verdicts": [{"kind": Kind.CHECK, "level": Level.HIGH, "passed": True, "box": (1, 2, 3, 4)}],
    "by_row": {0: "r0", 1.5: "half"},
    "text": 'naïve ✓ "quoted" \\ \n',
}


def test_it_encodes_what_the_standard_library_encodes_to_the_same_json() -> None:
    assert json.loads(json_columns.dumps(VALUE)) == json.loads(json.dumps(VALUE))
    assert json_columns.loads(json.dumps(VALUE)) == json.loads(json.dumps(VALUE))


def test_numpy_scalars_are_numbers_and_nan_is_null() -> None:
    # The standard library refused these; Postgres refused its NaN.
    decoded = json_columns.loads(json_columns.dumps({"a": np.float32(0.5), "b": np.int64(7), "c": math.nan}))
    assert decoded == {"a": 0.5, "b": 7, "c": None}


def test_what_json_cannot_hold_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="object"):
        json_columns.dumps({"a": object()})


def test_the_engine_writes_and_reads_the_columns_with_it(fresh_db: str) -> None:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(make_campaign()))
        assert campaign is not None
        # numpy's float32, which only this codec encodes: the engine's statements go through it
        qc = {**VALUE, "area": np.float32(0.25)}
        store_rows(session, [Candidate(tenant_id=campaign.tenant_id, campaign_id=campaign.id, layout_key="k0", qc=qc)])
    with session_scope() as session:
        stored = session.scalars(select(Candidate.qc).where(Candidate.campaign_id == campaign.id)).one()
    assert stored == {**json.loads(json.dumps(VALUE)), "area": 0.25}
