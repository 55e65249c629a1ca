"""deliver's content credentials: every result of the round gets a C2PA-signed copy (shared.provenance).

The signed copy is stored next to the unsigned candidate (``candidate.c2pa.png``) and named in the
candidate's integrity record (``integrity.credentials``: key, sha256, credential kind), so no column
changes. C2PA writes the manifest into a PNG chunk: the pixels, and the integrity proof with them, are the
candidate's. Signing is idempotent (same key, same content claims): a retried deliver signs again.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from shared import provenance
from shared.db.models import Candidate, Result
from shared.db.session import session_scope
from shared.storage import Storage, get_storage
from workers.engine.context import StageContext, StageError
from workers.pipeline.common import tenant_asset
from workers.pipeline.outputs import RetrieveOutput


def sign_results(ctx: StageContext) -> dict[str, Any]:
    """Sign every result of the campaign's current review round; what deliver's run reports."""
    started = time.perf_counter()
    cred, storage = provenance.credential(ctx.settings), get_storage()
    with session_scope() as session:
        backgrounds: dict[tuple[int, int] | None, dict[str, Any] | None] = {}  # per canvas, as generate chose
        rows = session.scalars(
            select(Candidate)
            .join(Result, Candidate.id == Result.candidate_id)
            .where(Result.of_current_round(ctx.campaign), Candidate.tenant_id == ctx.tenant_id)
            .order_by(Result.rank)
        ).all()
        for cand in rows:
            canvas = _canvas(cand)
            if canvas not in backgrounds:
                backgrounds[canvas] = _background(ctx, session, canvas)
            background = backgrounds[canvas]
            signed = _sign(storage, cand, f"{cand.layout_key}.png", background, cred)
            cand.integrity = {**(cand.integrity or {}), "credentials": signed}
            if (cand.integrity.get("creative") or {}).get("key"):  # the creative version is signed too
                creative = _sign_creative(storage, cand, background, cred)
                cand.integrity = {**cand.integrity, "creative": {**cand.integrity["creative"], "credentials": creative}}
    return {
        "signed": len(rows),
        "creatives": sum(bool((c.integrity.get("creative") or {}).get("credentials")) for c in rows),
        "credential": "development" if cred.development else "configured",
        "seconds": round(time.perf_counter() - started, 3),
    }


def _sign(
    storage: Storage, cand: Candidate, title: str, background: dict[str, Any] | None, cred: provenance.Credential
) -> dict[str, Any]:
    image_key = cand.image_key or ""
    record = cand.integrity or {}
    scene = background if (cand.generation or {}).get("init") != "none" else None  # sd painted it all: none
    definition = provenance.manifest(title, record, cand.generation or {}, scene, cred.development)
    signed = provenance.sign(storage.get(image_key), definition, cred)
    key = provenance.signed_key(image_key)
    storage.put(key, signed, provenance.mime_of(signed))
    return {
        "key": key,
        "sha256": provenance.sha256(signed),
        "credential": "development" if cred.development else "configured",
        "source_type": provenance.source_type(cand.generation or {}),
    }


def _sign_creative(
    storage: Storage, cand: Candidate, background: dict[str, Any] | None, cred: provenance.Credential
) -> dict[str, Any]:
    """The creative's signed copy: the clean image's manifest plus the overlay (clean image, logo, font)."""
    record, creative = cand.integrity or {}, (cand.integrity or {})["creative"]
    scene = background if (cand.generation or {}).get("init") != "none" else None
    title = f"{cand.layout_key}.creative.png"
    base = provenance.manifest(title, record, cand.generation or {}, scene, cred.development)
    clean = {"key": cand.image_key, "sha256": provenance.sha256(storage.get(cand.image_key or ""))}
    kit = ((cand.qc or {}).get("creative") or {}).get("ingredients") or []
    signed = provenance.sign(storage.get(creative["key"]), provenance.creative_manifest(base, clean, kit), cred)
    key = provenance.signed_key(creative["key"])
    storage.put(key, signed, provenance.mime_of(signed))
    kind = "development" if cred.development else "configured"
    return {"key": key, "sha256": provenance.sha256(signed), "credential": kind}


def _canvas(cand: Candidate) -> tuple[int, int] | None:
    canvas = (cand.placement or {}).get("canvas") or {}
    return (int(canvas["width"]), int(canvas["height"])) if "width" in canvas and "height" in canvas else None


def _background(ctx: StageContext, session: Any, canvas: tuple[int, int] | None) -> dict[str, Any] | None:
    """The canvas's retrieved background asset by its stored sha256 (None: the brand's studio backdrop, generated)."""
    try:
        retrieved = ctx.output(RetrieveOutput)
        asset_id = retrieved.background_for(canvas) if canvas else retrieved.background_asset_id
        asset = tenant_asset(session, ctx.tenant_id, asset_id) if asset_id else None
    except StageError:  # no retrieval, or the asset was deleted since: the manifest names the product alone
        return None
    if asset is None:
        return None
    return {"asset_id": str(asset.id), "key": asset.storage_key, "sha256": asset.sha256}
