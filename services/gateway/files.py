"""GET /files/{key}: objects of the local storage backend, behind expiring HMAC-signed URLs.

With the S3 backend clients get presigned S3 URLs instead and this route answers 404.
"""

from __future__ import annotations

import mimetypes
import time
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from services.gateway.deps import StorageDep
from services.gateway.errors import ProblemError, not_found
from shared.storage import LocalStorage, verify_local

router = APIRouter(tags=["files"])


def _forbidden() -> ProblemError:
    return ProblemError(403, "forbidden", "Forbidden", "The file URL's signature is invalid or has expired.")


@router.get(
    "/files/{key:path}",
    response_class=FileResponse,
    responses={403: {"description": "Bad or expired signature."}, 404: {"description": "No such object."}},
)
def get_file(
    key: str,
    storage: StorageDep,
    expires: Annotated[str | None, Query(max_length=20)] = None,
    signature: Annotated[str | None, Query(max_length=128)] = None,
) -> FileResponse:
    if not isinstance(storage, LocalStorage):
        raise not_found("File")
    # Missing or malformed parameters are a bad signature too (403), not a validation error.
    if not expires or not expires.isdigit() or not signature:
        raise _forbidden()
    if not verify_local(storage.secret, key, int(expires), signature):
        raise _forbidden()
    try:
        path = storage.path(key)
    except ValueError:
        raise not_found("File") from None
    if not path.is_file():
        raise not_found("File")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    max_age = max(0, int(expires) - int(time.time()))
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": f"private, max-age={max_age}", "X-Content-Type-Options": "nosniff"},
    )
