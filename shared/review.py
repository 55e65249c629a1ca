"""Human review, as both sides see it: the reasons a reviewer can give, the typed change that feedback is
routed to (workers/language/feedback.py routes, workers/jobs/feedback.py applies), and where a change makes
the next review round start.

A change names only what must differ from the round before; changes accumulate over review rounds
(`Change.merged`), so a background change after a scale change keeps the larger product.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.stages import MAIN_PATH


class Reason(StrEnum):
    """Structured reasons for a rejection or a feedback (the review page's chips)."""

    PRODUCT = "product"
    BACKGROUND = "background"
    COMPOSITION = "composition"  # composition / placement
    SCALE = "scale"
    LIGHTING = "lighting"  # lighting / shadow
    TEXT_ARTEFACTS = "text_artefacts"
    OFF_BRAND_COLOUR = "off_brand_colour"
    OTHER = "other"


REASON_LABELS: dict[Reason, str] = {
    Reason.PRODUCT: "Product",
    Reason.BACKGROUND: "Background",
    Reason.COMPOSITION: "Composition / placement",
    Reason.SCALE: "Scale",
    Reason.LIGHTING: "Lighting / shadow",
    Reason.TEXT_ARTEFACTS: "Text artefacts",
    Reason.OFF_BRAND_COLOUR: "Off-brand colour",
    Reason.OTHER: "Other",
}

# What one step of `scale` multiplies the product's planned size by (composition: workers/pipeline/plan.py).
SCALE_STEP = 1.25


class ChangeSize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=64, le=4096)
    height: int = Field(ge=64, le=4096)


class Change(BaseModel):
    """What the next review round changes. Every field is optional; an empty change routes nothing."""

    model_config = ConfigDict(extra="forbid")

    # caption: clauses to add to the scene description, and words/clauses to drop from it
    caption_add: list[str] = Field(default_factory=list, max_length=10)
    caption_remove: list[str] = Field(default_factory=list, max_length=10)
    # retrieval: another background, by a new query or an explicit asset; the ones shown are excluded
    background_query: str | None = Field(default=None, max_length=300)
    background_asset_id: uuid.UUID | None = None
    exclude_background_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)
    # composition: product scale steps (+1 larger by SCALE_STEP, -1 smaller), horizontal placement, rotation
    scale_steps: int = Field(default=0, ge=-4, le=4)
    placement: Literal["left", "centre", "right"] | None = None
    rotation: bool | None = None  # False: upright only
    # QC: +1 stricter (fewer checks may be relaxed), -1 looser (the flexible policy); 0 unchanged
    qc: int = Field(default=0, ge=-1, le=1)
    # another ad size set (replaces the campaign's sizes)
    sizes: list[ChangeSize] | None = Field(default=None, max_length=10)
    # another brief (replaces the request's or the inferred one): only from the feedback's structured `brief`
    # field, never routed from free text; the new round starts at decompose
    brief: str | None = Field(default=None, min_length=1, max_length=2000)

    def is_empty(self) -> bool:
        return self == Change()

    def merged(self, later: Change) -> Change:
        """This change followed by `later`: lists add up, scalars take the later value when it is set."""
        return Change(
            caption_add=[c for c in self.caption_add if c not in later.caption_remove] + later.caption_add,
            caption_remove=self.caption_remove + later.caption_remove,
            background_query=later.background_query or self.background_query,
            background_asset_id=later.background_asset_id or self.background_asset_id,
            exclude_background_ids=list(dict.fromkeys(self.exclude_background_ids + later.exclude_background_ids)),
            scale_steps=max(-4, min(4, self.scale_steps + later.scale_steps)),
            placement=later.placement or self.placement,
            rotation=later.rotation if later.rotation is not None else self.rotation,
            qc=later.qc or self.qc,
            sizes=later.sizes or self.sizes,
            brief=later.brief or self.brief,
        )

    def entry_stage(self) -> str:
        """The earliest stage this change touches: the new review round starts there."""
        if self.brief:
            return "decompose"  # everything downstream reads the brief's parts (even the product, when retrieved)
        if self.background_query or self.background_asset_id or self.exclude_background_ids:
            return "retrieve"
        if self.caption_add or self.caption_remove:
            return "caption"
        if self.scale_steps or self.placement or self.rotation is not None or self.sizes:
            return "plan"
        return "rank"  # a QC change re-judges the candidates already made

    def reused_stages(self) -> frozenset[str]:
        """Stages after the entry whose output the change cannot affect: carried over, not run again.
        The product cut-out never depends on the caption or the background."""
        entry = self.entry_stage()
        return frozenset({"segment"}) if entry in ("retrieve", "caption") else frozenset()


def stages_run(change: Change) -> tuple[str, ...]:
    """The main-path stages a review round with this change runs (its entry onward, minus the reused)."""
    entry = change.entry_stage()
    path = MAIN_PATH[MAIN_PATH.index(entry) :]
    return tuple(s for s in path if s not in change.reused_stages())


def reviewer_for_key(prefix: str, name: str | None = None) -> str:
    """Who decided through the API: the key's prefix, and the name the client gave, if any."""
    return f"key:{prefix}" + (f" ({name.strip()[:200]})" if name and name.strip() else "")


def reviewer_for_link(link_id: uuid.UUID, name: str) -> str:
    """Who decided on the review page: the link, and the reviewer it was made for."""
    return f"link:{link_id} ({name.strip()[:200]})"


def round_window(state: dict[str, Any] | None) -> tuple[int, tuple[str, ...]]:
    """Where the campaign's current review round starts, from campaign.state["review"] (written by
    workers/engine/review.py): its first stage-run round and the main-path stages before its entry (done
    earlier, nothing to redo). Progress and the stage list count runs from that round on plus those stages,
    so a regenerating campaign reads where its change entered, not 1.0 from the round before."""
    record = (state or {}).get("review") or {}
    entry = record.get("entry_stage")
    upstream = MAIN_PATH[: MAIN_PATH.index(entry)] if entry in MAIN_PATH else ()
    return int(record.get("first_round") or 0), upstream
