"""/v1/brands/{brand_id}/kit: the brand kit (logos, fonts, text colours, layout rules) the creatives use."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from services.gateway.brand_kit import service
from services.gateway.brand_kit.schemas import KitFontRead, KitLogoRead, KitRead, KitUpdate
from services.gateway.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from shared.brand_kit import MAX_LOGOS, FontRole

router = APIRouter(prefix="/v1/brands/{brand_id}/kit", tags=["brand kit"])

Name = Annotated[str | None, Form(min_length=1, max_length=100, description="Defaults to a generated name.")]
UPLOAD_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "not_found: no such brand."},
    413: {"description": "payload_too_large: over the byte or pixel limit."},
}


@router.get("", response_model=KitRead)
def get_kit(brand_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep, storage: StorageDep) -> KitRead:
    """The kit, with short-lived download URLs for its logos and fonts."""
    return service.to_read(service.get(session, tenant_id, brand_id), storage)


@router.patch("", response_model=KitRead)
def update_kit(
    brand_id: uuid.UUID, body: KitUpdate, session: SessionDep, tenant_id: TenantDep, storage: StorageDep
) -> KitRead:
    return service.to_read(service.update(session, tenant_id, brand_id, body), storage)


@router.post(
    "/logos",
    status_code=status.HTTP_201_CREATED,
    response_model=KitLogoRead,
    responses={
        **UPLOAD_PROBLEMS,
        409: {"description": f"kit_full: the kit already has {MAX_LOGOS} logos."},
    },
)
def add_logo(
    brand_id: uuid.UUID,
    file: Annotated[UploadFile, File(description="PNG or WebP (alpha kept), or SVG (rasterised, no external refs).")],
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
    name: Name = None,
) -> KitLogoRead:
    """Stored as an RGBA PNG. 422: invalid_logo (not PNG/WebP/SVG, or unusable), unsafe_svg (a DOCTYPE, an
    entity, a reference outside the document, a script), invalid_image (a corrupt PNG/WebP)."""
    logo = service.add_logo(session, storage, settings, tenant_id, brand_id, file.file, name)
    return service.logo_read(logo, storage)


@router.post("/fonts", status_code=status.HTTP_201_CREATED, response_model=KitFontRead, responses=UPLOAD_PROBLEMS)
def set_font(
    brand_id: uuid.UUID,
    file: Annotated[UploadFile, File(description="A TTF or OTF font (not WOFF/WOFF2, not a collection).")],
    role: Annotated[FontRole, Form(description="headline, or body (CTA and legal text).")],
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
    name: Name = None,
) -> KitFontRead:
    """The font for `role`, replacing the role's previous one. 422 invalid_font: not a usable TTF/OTF."""
    font = service.set_font(session, storage, settings, tenant_id, brand_id, file.file, role, name)
    return service.font_read(font, storage)


@router.delete("/logos/{logo_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_logo(brand_id: uuid.UUID, logo_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete_logo(session, tenant_id, brand_id, logo_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/fonts/{font_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_font(brand_id: uuid.UUID, font_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete_font(session, tenant_id, brand_id, font_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
