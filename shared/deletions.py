"""The storage-deletion outbox (storage_deletions): what a DELETE leaves for the cleanup job.

A DELETE removes the resource's rows (derived rows cascade) and, in the same transaction, writes one row per
key prefix whose objects must go. The objects are removed only after that commit (workers/jobs/cleanup.py):
no row ever points at a missing object, and should the send after commit be lost or storage fail, the beat's
sweep finds the row again. A campaign gets a second pass an hour later: a task that was
computing when the campaign was deleted may still write under its prefix before it notices.
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy.orm import Session

from shared.db.models import StorageDeletion
from shared.storage import asset_prefix, brand_prefix, campaign_prefix

# kit_file: one brand-kit logo or font (replaced or removed), its prefix given by the caller (shared.storage).
Resource = Literal["asset", "campaign", "brand", "kit_file"]

CLEANUP_TASK = "onbrand.delete_objects"
# A campaign's second pass: a stage task that claimed its run before the DELETE writes its objects within its own
# run time (generate's slowest batch on CPU takes minutes); an hour later its prefix is swept once more.
SECOND_PASS_SECONDS = 3600


def schedule(
    session: Session, tenant_id: uuid.UUID, resource: Resource, resource_id: uuid.UUID, prefix: str | None = None
) -> StorageDeletion:
    """The row that removes every object of `resource_id` once the caller's transaction commits."""
    passes = 1  # assets and brand kits: only the gateway writes them, before its commit
    if resource == "asset":
        prefix = asset_prefix(tenant_id, resource_id)
    elif resource == "brand":
        prefix = brand_prefix(tenant_id, resource_id)  # the kit's logos and fonts
    elif resource == "campaign":
        prefix, passes = campaign_prefix(tenant_id, resource_id), 2  # workers write them: a late write is swept
    if prefix is None:
        raise ValueError(f"a {resource} deletion needs its prefix")
    row = StorageDeletion(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        resource=resource,
        resource_id=resource_id,
        prefix=prefix,
        passes_left=passes,
        attempts=0,
    )
    session.add(row)
    return row
