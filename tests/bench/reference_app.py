"""The reference the gateway benchmark measures against: the least a FastAPI service can do for a campaign.

It validates the same body (services.gateway.campaigns.schemas.CampaignCreate) and INSERTs one row into the same
Postgres through a psycopg connection pool (one transaction: BEGIN, INSERT, COMMIT), with no authentication,
quotas, outbox or queue. Served by uvicorn exactly as `onbrand gateway` serves the gateway (same event loop and
HTTP parser, same worker count), so the ratio measures Onbrand's request path, not the server.

    REFERENCE_DATABASE_URL=postgresql://... uvicorn tests.bench.reference_app:create_app --factory
"""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI, status
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from services.gateway.campaigns.schemas import CampaignCreate

TABLE_DDL = "CREATE TABLE IF NOT EXISTS reference_campaigns (id uuid PRIMARY KEY, body jsonb NOT NULL)"
POOL_SIZE = 10  # the gateway's default pool size


def create_app() -> FastAPI:
    pool = ConnectionPool(os.environ["REFERENCE_DATABASE_URL"], min_size=POOL_SIZE, max_size=POOL_SIZE, open=True)
    with pool.connection() as conn:
        conn.execute(TABLE_DDL)
    app = FastAPI()

    @app.post("/v1/campaigns", status_code=status.HTTP_202_ACCEPTED)
    def create_campaign(body: CampaignCreate) -> dict[str, str]:
        campaign_id = uuid.uuid4()
        with pool.connection() as conn:  # commits on leaving the block
            conn.execute(
                "INSERT INTO reference_campaigns (id, body) VALUES (%s, %s)",
                (campaign_id, Jsonb(body.model_dump(mode="json"))),
            )
        return {"id": str(campaign_id), "status": "queued"}

    return app
