"""The brand kit: logos, fonts, text colours and layout rules, stored in brands.kit (shared.brand_kit.BrandKit).

Each kit file lies under its own prefix in the brand's storage folder (shared.storage.kit_file_prefix). Every
write locks the brand row, so concurrent uploads cannot both take the last logo slot or the same font role.
Objects are written before the row changes and deleted by the rollback hook if anything later fails; a replaced
or removed file's objects go through the storage-deletion outbox once the change has committed.
"""

from __future__ import annotations

import hashlib
import uuid
from functools import partial
from typing import BinaryIO, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.brand_kit import uploads
from services.gateway.brand_kit.schemas import KitFontRead, KitLogoRead, KitRead, KitUpdate
from services.gateway.errors import ProblemError, not_found
from services.gateway.unit_of_work import enqueue, on_rollback
from shared.brand_kit import MAX_LOGOS, BrandKit, FontRole, KitFont, KitLogo, KitRules
from shared.config import Settings
from shared.db.models import Brand
from shared.deletions import CLEANUP_TASK, schedule
from shared.storage import Storage, kit_file_prefix

PNG = "image/png"


def _brand(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, lock: bool = False) -> Brand:
    stmt = select(Brand).where(Brand.id == brand_id, Brand.tenant_id == tenant_id)
    brand = session.scalar(stmt.with_for_update() if lock else stmt)
    if brand is None:
        raise not_found("Brand")
    return brand


def _save(session: Session, brand: Brand, kit: BrandKit) -> None:
    brand.kit = kit.model_dump(mode="json")
    session.flush()


def _put(session: Session, storage: Storage, key: str, data: bytes, content_type: str) -> None:
    on_rollback(session, partial(storage.delete, key))  # registered first: a failed put or commit leaves nothing
    storage.put(key, data, content_type)


def _remove_later(session: Session, brand: Brand, file_id: uuid.UUID) -> None:
    """The file's objects go once this transaction commits (the cleanup job, through the deletions outbox)."""
    prefix = kit_file_prefix(brand.tenant_id, brand.id, file_id)
    deletion = schedule(session, brand.tenant_id, "kit_file", file_id, prefix)
    enqueue(session, CLEANUP_TASK, deletion.id)


def logo_read(logo: KitLogo, storage: Storage) -> KitLogoRead:
    return KitLogoRead(
        id=logo.id,
        name=logo.name,
        width=logo.width,
        height=logo.height,
        sha256=logo.sha256,
        from_svg=logo.source_key is not None,
        url=storage.url(logo.key),
    )


def font_read(font: KitFont, storage: Storage) -> KitFontRead:
    return KitFontRead(
        id=font.id,
        name=font.name,
        role=font.role,
        family=font.family,
        style=font.style,
        sha256=font.sha256,
        url=storage.url(font.key),
    )


def to_read(brand: Brand, storage: Storage) -> KitRead:
    kit = BrandKit.of(brand.kit)
    return KitRead(
        brand_id=brand.id,
        logos=[logo_read(logo, storage) for logo in kit.logos],
        fonts=[font_read(font, storage) for font in kit.fonts],
        text_colors=kit.text_colors,
        button_color=kit.button_color,
        rules=kit.rules,
    )


def get(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID) -> Brand:
    return _brand(session, tenant_id, brand_id)


def add_logo(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant_id: uuid.UUID,
    brand_id: uuid.UUID,
    stream: BinaryIO,
    name: str | None,
) -> KitLogo:
    brand = _brand(session, tenant_id, brand_id, lock=True)
    kit = BrandKit.of(brand.kit)
    if len(kit.logos) >= MAX_LOGOS:
        detail = f"A brand kit holds at most {MAX_LOGOS} logos: delete one before adding another."
        raise ProblemError(409, "kit_full", "Brand kit full", detail)
    checked = uploads.logo(stream, settings)  # every check before the first object is written
    logo_id = uuid.uuid4()
    prefix = kit_file_prefix(tenant_id, brand.id, logo_id)
    logo = KitLogo(
        id=logo_id,
        name=name or f"logo {len(kit.logos) + 1}",
        key=prefix + "logo.png",
        source_key=prefix + "source.svg" if checked.svg_source is not None else None,
        width=checked.width,
        height=checked.height,
        sha256=checked.sha256,
    )
    _put(session, storage, logo.key, checked.png, PNG)
    if logo.source_key is not None and checked.svg_source is not None:
        _put(session, storage, logo.source_key, checked.svg_source, "image/svg+xml")
    kit.logos.append(logo)
    _save(session, brand, kit)
    return logo


def set_font(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant_id: uuid.UUID,
    brand_id: uuid.UUID,
    stream: BinaryIO,
    role: FontRole,
    name: str | None,
) -> KitFont:
    """The role's font; one already there is replaced (its object deleted after the commit)."""
    brand = _brand(session, tenant_id, brand_id, lock=True)
    data, info = uploads.font(stream, settings)
    kit = BrandKit.of(brand.kit)
    font_id = uuid.uuid4()
    extension = "otf" if info.format.startswith("OpenType") else "ttf"
    family, style = _printable(info.family, "unknown"), _printable(info.style, "Regular")
    font = KitFont(
        id=font_id,
        name=name or f"{family} {style}",
        key=f"{kit_file_prefix(tenant_id, brand.id, font_id)}font.{extension}",
        role=role,
        family=family,
        style=style,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    _put(session, storage, font.key, data, f"font/{extension}")
    replaced = kit.font(role)
    kit.fonts = [f for f in kit.fonts if f.role != role] + [font]
    _save(session, brand, kit)
    if replaced is not None:
        _remove_later(session, brand, replaced.id)
    return font


def _printable(text: str, fallback: str) -> str:
    """A name read from the font file, as Postgres can store it (no NUL, no lone surrogate) and short."""
    kept = "".join(c for c in text if c.isprintable()).encode("utf-8", "ignore").decode("utf-8")
    return kept.strip()[:100] or fallback


def delete_logo(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, logo_id: uuid.UUID) -> None:
    _delete_file(session, tenant_id, brand_id, logo_id, "logos")


def delete_font(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, font_id: uuid.UUID) -> None:
    _delete_file(session, tenant_id, brand_id, font_id, "fonts")


def _delete_file(
    session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, file_id: uuid.UUID, field: Literal["logos", "fonts"]
) -> None:
    """Take the logo or font out of the kit; its objects are removed after the commit (deletions outbox)."""
    brand = _brand(session, tenant_id, brand_id, lock=True)
    kit = BrandKit.of(brand.kit)
    files: list[KitLogo] | list[KitFont] = getattr(kit, field)
    kept = [f for f in files if f.id != file_id]
    if len(kept) == len(files):
        raise not_found("Logo" if field == "logos" else "Font")
    setattr(kit, field, kept)
    _save(session, brand, kit)
    _remove_later(session, brand, file_id)


def update(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, body: KitUpdate) -> Brand:
    """Text colours and the button colour as given; the rules given merged into the brand's."""
    brand = _brand(session, tenant_id, brand_id, lock=True)
    kit = BrandKit.of(brand.kit)
    if body.text_colors is not None:
        kit.text_colors = body.text_colors
    if "button_color" in body.model_fields_set:
        kit.button_color = body.button_color
    if body.rules is not None:
        changed = body.rules.model_dump(include=body.rules.model_fields_set)
        kit.rules = KitRules.model_validate({**kit.rules.model_dump(), **changed})
    _save(session, brand, kit)
    return brand
