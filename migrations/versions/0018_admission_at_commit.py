"""Quota admission at commit (issue M): a deferred constraint trigger on the images ledger checks a new campaign's
concurrent-campaigns and images quotas under the tenant's lock when its transaction commits, against counts that do
not grow with the tenant's history.

Before, the gateway took the tenant's lock, then counted every live campaign and summed (after rewriting) every
ledger row of the month, and then still wrote and committed: the lock was held over several client round trips and
the work grew with every campaign, so a tenant's burst ran at 20-90 creations a second. Now:
- `image_usage.admitted_under` holds the limits the campaign was admitted under (null: limits were off, the row is
  only the ledger). The trigger refuses with SQLSTATE OB429 (concurrent campaigns) or OB402 (images), detail a JSON
  object, and the transaction rolls back whole.
- `tenant_live` counts each tenant's non-terminal campaigns (a trigger on campaigns keeps it, whoever writes them)
  and `image_usage_days` rolls the ledger up per tenant and UTC day (the admission adds a row's amount, a settle
  its change): what the admission reads does not grow with the tenant's history. Both are written as transactions
  commit (deferred triggers), so their row locks are held for the commit alone; the tenant's `tenant_live` row is
  the lock that serialises its admissions.
The statuses below are shared.db.models.TERMINAL_STATUSES (a test keeps them equal).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

LIVE = "status NOT IN ('completed', 'partial', 'failed', 'cancelled')"

# +1 for a campaign that starts live, -1 when it ends, +1 if a review round reopens it, -1 if a live one is deleted.
COUNT_LIVE = f"""
CREATE FUNCTION onbrand_count_live() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  was int := CASE WHEN TG_OP <> 'INSERT' AND OLD.{LIVE} THEN 1 ELSE 0 END;
  now_live int := CASE WHEN TG_OP <> 'DELETE' AND NEW.{LIVE} THEN 1 ELSE 0 END;
BEGIN
  IF now_live = was THEN
    RETURN NULL;
  ELSIF TG_OP = 'DELETE' THEN  -- the tenant may be going too: never insert for it
    UPDATE tenant_live SET campaigns = campaigns - 1 WHERE tenant_id = OLD.tenant_id;
  ELSE
    INSERT INTO tenant_live AS t (tenant_id, campaigns) VALUES (NEW.tenant_id, now_live - was)
    ON CONFLICT (tenant_id) DO UPDATE SET campaigns = t.campaigns + EXCLUDED.campaigns;
  END IF;
  RETURN NULL;
END $$
"""

ROLL_UP = """
CREATE FUNCTION onbrand_roll_up_usage(p_tenant uuid, p_at timestamptz, p_images bigint) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO image_usage_days AS d (tenant_id, day, images)
  VALUES (p_tenant, (p_at AT TIME ZONE 'UTC')::date, p_images)
  ON CONFLICT (tenant_id, day) DO UPDATE SET images = d.images + EXCLUDED.images
$$
"""

ADMIT = f"""
CREATE FUNCTION onbrand_admit_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  lim jsonb := NEW.admitted_under;
  running bigint;
  day_used bigint;
  month_used bigint;
BEGIN
  IF lim IS NOT NULL THEN
    -- The campaign's own trigger fired first (its INSERT came first: the ledger row references it) and left the
    -- tenant's tenant_live row locked until this commit: that lock serialises the tenant's admissions, and each
    -- statement here takes a new snapshot (READ COMMITTED), so the counts include every admission committed before.
    SELECT coalesce((SELECT campaigns FROM tenant_live WHERE tenant_id = NEW.tenant_id), 0)
         - (SELECT count(*) FROM campaigns WHERE id = NEW.campaign_id AND {LIVE})
      INTO running;
    IF running >= (lim->>'max_concurrent_campaigns')::bigint THEN
      RAISE EXCEPTION 'concurrent_campaigns_limit' USING ERRCODE = 'OB429',
        DETAIL = json_build_object('limit', (lim->>'max_concurrent_campaigns')::bigint, 'used', running)::text;
    END IF;
    SELECT coalesce(sum(images) FILTER (WHERE day = (now() AT TIME ZONE 'UTC')::date), 0), coalesce(sum(images), 0)
      INTO day_used, month_used
      FROM image_usage_days
     WHERE tenant_id = NEW.tenant_id AND day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    IF day_used + NEW.reserved > (lim->>'images_per_day')::bigint THEN
      RAISE EXCEPTION 'quota_exceeded' USING ERRCODE = 'OB402', DETAIL = json_build_object(
        'period', 'day', 'limit', (lim->>'images_per_day')::bigint, 'used', day_used, 'requested', NEW.reserved)::text;
    END IF;
    IF month_used + NEW.reserved > (lim->>'images_per_month')::bigint THEN
      RAISE EXCEPTION 'quota_exceeded' USING ERRCODE = 'OB402', DETAIL = json_build_object(
        'period', 'month', 'limit', (lim->>'images_per_month')::bigint, 'used', month_used, 'requested', NEW.reserved
      )::text;
    END IF;
  END IF;
  PERFORM onbrand_roll_up_usage(NEW.tenant_id, NEW.created_at, coalesce(NEW.used, NEW.reserved));
  RETURN NULL;
END $$
"""

# A settle (shared.limits.settle) changes a row's amount: its day's roll-up follows, at commit like the admission.
SETTLE = """
CREATE FUNCTION onbrand_settle_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(NEW.used, NEW.reserved) <> coalesce(OLD.used, OLD.reserved) THEN
    PERFORM onbrand_roll_up_usage(
      NEW.tenant_id, NEW.created_at, coalesce(NEW.used, NEW.reserved) - coalesce(OLD.used, OLD.reserved));
  END IF;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.add_column("image_usage", sa.Column("admitted_under", postgresql.JSONB(), nullable=True))
    op.create_table(
        "image_usage_days",
        sa.Column("tenant_id", postgresql.UUID(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("images", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO image_usage_days (tenant_id, day, images) "
        "SELECT tenant_id, (created_at AT TIME ZONE 'UTC')::date, sum(coalesce(used, reserved)) "
        "FROM image_usage GROUP BY 1, 2"
    )
    op.create_table(
        "tenant_live",
        sa.Column("tenant_id", postgresql.UUID(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("campaigns", sa.BigInteger(), nullable=False),
    )
    op.execute(
        f"INSERT INTO tenant_live (tenant_id, campaigns) SELECT tenant_id, count(*) FROM campaigns WHERE {LIVE} GROUP BY 1"
    )
    for function in (COUNT_LIVE, ROLL_UP, ADMIT, SETTLE):
        op.execute(function)
    op.execute(
        "CREATE CONSTRAINT TRIGGER campaigns_count_live AFTER INSERT OR UPDATE OF status OR DELETE ON campaigns "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION onbrand_count_live()"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER image_usage_admission AFTER INSERT ON image_usage "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION onbrand_admit_usage()"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER image_usage_settle AFTER UPDATE OF used, reserved ON image_usage "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION onbrand_settle_usage()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER campaigns_count_live ON campaigns")
    op.execute("DROP TRIGGER image_usage_settle ON image_usage")
    op.execute("DROP TRIGGER image_usage_admission ON image_usage")
    for function in (
        "onbrand_settle_usage()",
        "onbrand_admit_usage()",
        "onbrand_roll_up_usage(uuid, timestamptz, bigint)",
        "onbrand_count_live()",
    ):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table("tenant_live")
    op.drop_table("image_usage_days")
    op.drop_column("image_usage", "admitted_under")
