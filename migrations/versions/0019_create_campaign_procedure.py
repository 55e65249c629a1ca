"""A campaign creation as one CALL (issue M): the procedure writes the campaign, its quota ledger row, its first
event's outbox rows and its Idempotency-Key in one statement, commits, and makes the commit durable, all in one
round trip with one parameter (services/gateway/campaigns/insert.py).

Before, the gateway sent the statement with ~35 bound parameters and, in the same pipeline, BEGIN, COMMIT and a
second transaction for the WAL flush: four statements' worth of client CPU (the driver's per-statement and
per-parameter work was most of a creation's database cost). Here the request is one jsonb document, read into the
rows' column types by Postgres (jsonb_populate_record), and the transaction control runs inside:
- With quotas on (`admitted_under` set), the admission trigger of migration 0018 takes the tenant's lock at commit.
  The transaction turns synchronous_commit off for itself, so the commit releases that lock at once, not after a flush
  of the WAL that would serialise the tenant's creations; the next transaction is given an id and commits
  synchronously when the CALL ends: its flush covers the WAL of the commit before it (one sequence), so the campaign
  is durable before the gateway sends its tasks or answers.
- A quota refused at the COMMIT inside fails the CALL with the trigger's SQLSTATE and detail: nothing was written.
- An unknown brand writes nothing and returns null timestamps.

CALL must run outside a transaction block (the gateway's async pool is autocommit) for the COMMIT inside to be
allowed. Each static statement's plan is cached per connection by PL/pgSQL.
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# The campaign's columns the gateway writes (the others take their defaults: created_at, updated_at, ...).
CAMPAIGN_COLUMNS = (
    "id",
    "tenant_id",
    "brand_id",
    "brief",
    "product_asset_ids",
    "sizes",
    "safe_zones",
    "copy",
    "top_k",
    "qc_policy",
    "max_retry_attempts",
    "max_prompt_revisions",
    "priority",
    "webhook_url",
    "webhook_secret",
    "event_sequence",
    "push_urls",
    "status",
    "round",
    "review_round",
    "state",
    "loop",
    "screening",
)

CREATE = f"""
CREATE PROCEDURE onbrand_create_campaign(
  request jsonb,
  INOUT created_at timestamptz DEFAULT NULL,
  INOUT updated_at timestamptz DEFAULT NULL,
  INOUT deliveries uuid[] DEFAULT NULL
) LANGUAGE plpgsql AS $$
DECLARE
  tenant uuid := (request->'campaign'->>'tenant_id')::uuid;
  admitted jsonb := nullif(request->'admitted_under', 'null'::jsonb);
BEGIN
  WITH brand AS (
    SELECT id FROM brands WHERE id = (request->'campaign'->>'brand_id')::uuid AND tenant_id = tenant
  ), campaign AS (
    INSERT INTO campaigns ({", ".join(CAMPAIGN_COLUMNS)})
    SELECT {", ".join("brand.id" if c == "brand_id" else f"r.{c}" for c in CAMPAIGN_COLUMNS)}
    FROM brand CROSS JOIN jsonb_populate_record(NULL::campaigns, request->'campaign') AS r
    RETURNING campaigns.id, campaigns.created_at, campaigns.updated_at
  ), ledger AS (
    INSERT INTO image_usage (id, tenant_id, campaign_id, reserved, admitted_under)
    SELECT (request->>'usage_id')::uuid, tenant, campaign.id, (request->>'reserved')::int, admitted FROM campaign
  ), sent AS (
    -- An endpoint's row only while it exists and is enabled, to its current URL: the list of endpoints may come
    -- from a process's cache (tenant_config), the row never goes to an endpoint disabled or deleted since.
    INSERT INTO webhook_deliveries (id, tenant_id, campaign_id, url, endpoint_id, event_id, event_type, payload,
        status, attempts, next_attempt_at, leased_until)
    SELECT d.id, tenant, campaign.id, coalesce(e.url, d.url), d.endpoint_id, request->'event'->>'event_id',
        request->'event'->>'event_type', request->'event'->'payload', 'pending', 0,
        (request->'event'->>'now')::timestamptz, (request->'event'->>'leased_until')::timestamptz
    FROM campaign
    CROSS JOIN jsonb_to_recordset(request->'event'->'targets') AS d(id uuid, url text, endpoint_id uuid)
    LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.tenant_id = tenant AND e.enabled
    WHERE d.endpoint_id IS NULL OR e.id IS NOT NULL
    RETURNING webhook_deliveries.id
  ), claim AS (
    -- Waits on a concurrent request's uncommitted key, then fails (idempotency_keys_pkey) if that one committed.
    INSERT INTO idempotency_keys (tenant_id, key, request_hash, campaign_id)
    SELECT tenant, request->'claim'->>'key', request->'claim'->>'request_hash', campaign.id
    FROM campaign WHERE jsonb_typeof(request->'claim') = 'object'
  )
  SELECT campaign.created_at, campaign.updated_at, ARRAY(SELECT id FROM sent)
    INTO created_at, updated_at, deliveries
    FROM campaign;
  IF created_at IS NOT NULL AND admitted IS NOT NULL THEN
    PERFORM set_config('synchronous_commit', 'off', true);
    COMMIT;  -- the admission trigger runs here: a refusal fails the CALL, and nothing was written
    PERFORM pg_current_xact_id();  -- a transaction with an id, committed (synchronously) as the CALL ends
  END IF;
END $$
"""


def upgrade() -> None:
    op.execute(CREATE)


def downgrade() -> None:
    op.execute("DROP PROCEDURE onbrand_create_campaign(jsonb, timestamptz, timestamptz, uuid[])")
