"""/v1/presets: the named ad sizes a campaign may ask for, with their safe zones."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.deps import TenantDep
from services.gateway.presets.schemas import PresetList, PresetRead
from shared.presets import PRESETS

router = APIRouter(prefix="/v1/presets", tags=["presets"])


@router.get("", response_model=PresetList)
def list_presets(tenant_id: TenantDep) -> PresetList:
    """Every preset (the same for every tenant; the key still has to be valid, with the read scope)."""
    del tenant_id  # authentication and scope only: presets are not tenant data
    return PresetList(items=[PresetRead.model_validate(p.record()) for p in PRESETS.values()])
