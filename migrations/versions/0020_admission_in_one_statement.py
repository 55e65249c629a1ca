"""The quota admission in one statement (issue M): the trigger of migration 0018 ran three statements at each
creation's commit (the running count, the month's day sums, then the day's roll-up through a SQL function), each an
executor start in PL/pgSQL; now one statement rolls the row up into its day and reads the counts beside it.

The counts are what they were: a data-modifying CTE runs once whatever the query reads of it, and the query's own
reads see the snapshot the statement started with, so the day sums are the roll-ups as they were before this row,
taken after the tenant's tenant_live row was locked (the campaign's trigger, which fires first): that lock still
serialises the tenant's admissions. A refusal raises as before and rolls the whole transaction back, roll-up
included. Without limits (`admitted_under` null) the row is only rolled up.

Measured on the embedded Postgres: a creation's CALL (migration 0019) 650-720 -> 540-575 us of Postgres CPU.
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

LIVE = "status NOT IN ('completed', 'partial', 'failed', 'cancelled')"  # shared.db.models.TERMINAL_STATUSES
MONTH = "day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date"
TODAY = "(now() AT TIME ZONE 'UTC')::date"

ADMIT = f"""
CREATE OR REPLACE FUNCTION onbrand_admit_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  lim jsonb := NEW.admitted_under;
  running bigint;
  day_used bigint;
  month_used bigint;
BEGIN
  IF lim IS NULL THEN
    PERFORM onbrand_roll_up_usage(NEW.tenant_id, NEW.created_at, coalesce(NEW.used, NEW.reserved));
    RETURN NULL;
  END IF;
  -- One statement: the roll-up below is written, and the sums read the month as it was before it (one snapshot).
  WITH rolled AS (
    INSERT INTO image_usage_days AS d (tenant_id, day, images)
    VALUES (NEW.tenant_id, (NEW.created_at AT TIME ZONE 'UTC')::date, coalesce(NEW.used, NEW.reserved))
    ON CONFLICT (tenant_id, day) DO UPDATE SET images = d.images + EXCLUDED.images
  )
  SELECT coalesce((SELECT campaigns FROM tenant_live WHERE tenant_id = NEW.tenant_id), 0)
       - (SELECT count(*) FROM campaigns WHERE id = NEW.campaign_id AND {LIVE}),
         coalesce(sum(images) FILTER (WHERE day = {TODAY}), 0),
         coalesce(sum(images), 0)
    INTO running, day_used, month_used
    FROM image_usage_days
   WHERE tenant_id = NEW.tenant_id AND {MONTH};
  IF running >= (lim->>'max_concurrent_campaigns')::bigint THEN
    RAISE EXCEPTION 'concurrent_campaigns_limit' USING ERRCODE = 'OB429',
      DETAIL = json_build_object('limit', (lim->>'max_concurrent_campaigns')::bigint, 'used', running)::text;
  END IF;
  IF day_used + NEW.reserved > (lim->>'images_per_day')::bigint THEN
    RAISE EXCEPTION 'quota_exceeded' USING ERRCODE = 'OB402', DETAIL = json_build_object(
      'period', 'day', 'limit', (lim->>'images_per_day')::bigint, 'used', day_used, 'requested', NEW.reserved)::text;
  END IF;
  IF month_used + NEW.reserved > (lim->>'images_per_month')::bigint THEN
    RAISE EXCEPTION 'quota_exceeded' USING ERRCODE = 'OB402', DETAIL = json_build_object(
      'period', 'month', 'limit', (lim->>'images_per_month')::bigint, 'used', month_used, 'requested', NEW.reserved
    )::text;
  END IF;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute(ADMIT)


def downgrade() -> None:
    import importlib

    # Migration 0018's definition, as it was (its CREATE FUNCTION made a replacement).
    before = importlib.import_module("migrations.versions.0018_admission_at_commit").ADMIT
    op.execute(before.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
