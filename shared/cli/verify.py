"""`onbrand verify CAMPAIGN_ID`: re-derive every result's product layer from the stored source photo and
mask its integrity record names, and check the result holds it bit for bit (shared.integrity.verify), in the
clean image and, when the result has one, in its creative version (the brand-kit overlay).
`onbrand verify IMAGE`: the same check for one delivered image file, from the integrity record its signed
C2PA manifest carries (shared.provenance), after the manifest itself validates.

Reads the database and object storage the configured settings point at, nothing else: what it checks
is the stored bytes, so a result that was edited, a source that was replaced or a mask that changed
after the fact all fail, each with its reason.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from sqlalchemy import select

from shared import integrity, provenance
from shared.config import get_settings
from shared.db.models import Candidate, Result
from shared.db.session import session_scope
from shared.storage import Storage, get_storage


@dataclass
class Checked:
    """One candidate's verification: which one, its rank (None when not a result), and the report."""

    candidate_id: uuid.UUID
    layout_key: str
    rank: int | None
    report: integrity.Report


def verify_campaign(campaign_id: uuid.UUID, every_candidate: bool = False) -> list[Checked]:
    """Every result of the campaign (or every candidate), in rank order, then by round and layout."""
    ranks, rows = _candidates(campaign_id, every_candidate)
    storage, files = get_storage(), dict[str, bytes]()
    out = []
    for cand in rows:
        out.append(Checked(cand.id, cand.layout_key, ranks.get(cand.id), _verify_one(cand, storage, files)))
    return out


def _candidates(campaign_id: uuid.UUID, every_candidate: bool) -> tuple[dict[uuid.UUID, int], list[Candidate]]:
    with session_scope() as session:
        results = session.scalars(select(Result).where(Result.campaign_id == campaign_id))
        ranks = {r.candidate_id: r.rank for r in results}
        query = select(Candidate).where(Candidate.campaign_id == campaign_id)
        if not every_candidate:
            query = query.where(Candidate.id.in_(list(ranks)))
        rows = list(session.scalars(query.order_by(Candidate.round, Candidate.layout_key)))
        for row in rows:
            session.expunge(row)
    rows.sort(key=lambda c: (ranks.get(c.id) is None, ranks.get(c.id) or 0))
    return ranks, rows


def _verify_one(cand: Candidate, storage: Storage, files: dict[str, bytes]) -> integrity.Report:
    record = cand.integrity or {}
    source, mask = (record.get(part) or {} for part in ("source", "mask"))
    if not source.get("key") or not mask.get("key") or cand.image_key is None:
        reason = "the integrity record names no source and mask (made before records existed)"
        return integrity.Report(False, 0.0, 0, False, False, False, False, [reason])
    try:
        for key in (source["key"], mask["key"]):
            if key not in files:  # every candidate of a campaign shares one source and mask
                files[key] = storage.get(key)
        versions = {"clean": _image(storage, cand.image_key)}
        if (record.get("creative") or {}).get("key"):  # the brand-kit overlay version: its product is exact too
            versions["creative"] = _image(storage, record["creative"]["key"])
    except (OSError, KeyError) as exc:
        return integrity.Report(False, 0.0, 0, False, False, False, False, [f"cannot read a stored file: {exc}"])
    return integrity.verify_versions(versions, files[source["key"]], files[mask["key"]], record)


def _image(storage: Storage, key: str) -> tuple[Image.Image, bytes]:
    data = storage.get(key)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image, data


def table(checked: list[Checked]) -> list[str]:
    """The lines `onbrand verify` prints: one per candidate, then the count."""
    lines = [f"{'rank':>4}  {'candidate':36}  {'layout':28}  {'exact':>8}  {'sha256':6}  result"]
    for c in checked:
        r = c.report
        rank = "-" if c.rank is None else str(c.rank)
        verdict = "verified" if r.ok else "FAILED: " + "; ".join(r.reasons)
        sha = "match" if r.sha256_match else "differ"
        key = c.layout_key[:28]
        lines.append(f"{rank:>4}  {c.candidate_id!s:36}  {key:28}  {r.exact_fraction:8.2%}  {sha:6}  {verdict}")
    ok = sum(c.report.ok for c in checked)
    lines.append(f"verified {ok}/{len(checked)}")
    return lines


@dataclass
class ImageCheck:
    """`onbrand verify IMAGE`: the manifest's reading, the product re-check (None when it could not run)."""

    reading: provenance.Reading
    report: integrity.Report | None
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons and self.report is not None and self.report.ok


def verify_image(path: Path) -> ImageCheck:
    """Validate the image's C2PA manifest against this deployment's trust anchors, then re-derive the product
    from the source and mask its integrity record names (read from the configured storage) and check it."""
    data = path.read_bytes()
    reading = provenance.read(data, provenance.trust_anchors(get_settings()))
    reasons = list(reading.failures)
    if reading.state == "Valid" and not reasons:
        reasons.append("the signer is not trusted by this deployment's C2PA trust anchors")
    record = reading.integrity
    if reading.state is not None and record is None:
        reasons.append(f"the manifest carries no readable {provenance.ASSERTION} record")
    if record is None:
        return ImageCheck(reading, None, reasons)
    try:  # an edited PNG may not even decode (a chunk's CRC no longer matches)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        return ImageCheck(reading, None, [*reasons, f"the image cannot be decoded: {exc}"])
    storage, files = get_storage(), dict[str, bytes]()
    try:
        for part in ("source", "mask"):
            files[part] = storage.get(str((record.get(part) or {})["key"]))
    except (OSError, KeyError) as exc:
        return ImageCheck(reading, None, [*reasons, f"cannot read the source or mask the manifest names: {exc}"])
    report = integrity.verify(image, files["source"], files["mask"], record)
    return ImageCheck(reading, report, reasons + report.reasons)


def image_lines(path: Path, check: ImageCheck) -> list[str]:
    """What `onbrand verify IMAGE` prints: the manifest, the product re-check, the verdict."""
    r = check.reading
    lines = [f"image      {path}", f"c2pa       {r.state or 'no manifest'}"]
    if r.manifest:
        note = f" - {provenance.DEV_NOTE}" if r.development else ""
        lines += [f"signer     {r.signer}{note}", f"source     {r.source_type}"]
    if check.report is not None:
        rep = check.report
        source = (r.integrity or {}).get("source") or {}
        lines.append(
            f"product    {rep.exact_fraction:.2%} of {rep.opaque_pixels} px exact vs source {source.get('sha256')}"
        )
    lines.append("verified" if check.ok else "FAILED: " + "; ".join(check.reasons or ["the product check did not run"]))
    return lines
