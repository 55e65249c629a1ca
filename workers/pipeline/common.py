"""What the stage modules share: images in object storage, the campaign's rows, model and LLM failures."""

from __future__ import annotations

import io
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import metrics
from shared.db.models import Asset, Brand, LlmCall
from shared.db.session import session_scope
from shared.model_specs import ModelSpec
from shared.storage import get_storage
from workers.engine.context import StageContext, StageError

T = TypeVar("T")
DEFAULT_SIZE = {"width": 1024, "height": 1024}


def load_image(key: str | None) -> Image.Image:
    if key is None:
        raise StageError("image_missing", "an image this stage needs was never stored")
    image = Image.open(io.BytesIO(get_storage().get(key)))
    image.load()
    return image


def save_png(key: str, image: Image.Image) -> str:
    store_png(key, image)
    return key


def store_png(key: str, image: Image.Image) -> bytes:
    """Encode and store; the stored bytes (their sha256 is what integrity records name)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over size: candidates are many
    data = buf.getvalue()
    get_storage().put(key, data, "image/png")
    return data


class ImageWriter:
    """A stage's images encoded and stored on background threads while the stage goes on with the next candidate:
    PNG encoding (~50 ms for a 1080x1350 candidate) and the storage call (an S3 PUT's round trip) release the GIL,
    so they overlap the compute instead of adding to it. At most `backlog` images wait (memory stays bounded).
    Leaving the block waits for every write and raises the first error: a stage never hands over a row naming an
    object that is not stored. `then(data)` callbacks run on the stage's own thread, once their image is stored."""

    def __init__(self, threads: int = 2, backlog: int = 8) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="onbrand-store")
        self._pending: deque[tuple[Future[bytes], Callable[[bytes], None] | None]] = deque()
        self._backlog = backlog

    def put_png(self, key: str, image: Image.Image, then: Callable[[bytes], None] | None = None) -> str:
        while len(self._pending) >= self._backlog:
            self._settle()
        self._pending.append((self._pool.submit(store_png, key, image), then))
        return key

    def _settle(self) -> None:
        future, then = self._pending.popleft()
        data = future.result()
        if then is not None:
            then(data)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            while kind is None and self._pending:
                self._settle()
        finally:  # on an error, writes not started are dropped (keys are deterministic: a retry rewrites them)
            self._pool.shutdown(wait=True, cancel_futures=True)


def tenant_asset(session: Session, tenant_id: uuid.UUID, asset_id: str | uuid.UUID) -> Asset:
    asset = session.scalars(
        select(Asset).where(Asset.tenant_id == tenant_id, Asset.id == uuid.UUID(str(asset_id)))
    ).first()
    if asset is None:
        raise StageError("asset_missing", f"asset {asset_id} no longer exists")
    return asset


def campaign_brand(ctx: StageContext) -> Brand:
    with session_scope() as session:
        brand = session.scalars(
            select(Brand).where(Brand.tenant_id == ctx.tenant_id, Brand.id == ctx.campaign.brand_id)
        ).first()
    if brand is None:
        raise StageError("brand_missing", f"brand {ctx.campaign.brand_id} no longer exists")
    return brand


def canvases(ctx: StageContext) -> list[tuple[int, int]]:
    return [(int(s["width"]), int(s["height"])) for s in (ctx.campaign.sizes or [DEFAULT_SIZE])]


@contextmanager
def llm_failures(stage: str) -> Iterator[None]:
    """A hosted LLM that cannot answer (no credentials, bad request) fails the stage at once with
    its name and reason; transient errors were retried by the backend and go to the task retries."""
    from workers.models.llm_api import LLMError

    try:
        yield
    except LLMError as exc:
        if exc.retryable:
            raise
        raise StageError(exc.code, f"{stage}: {exc.detail}") from None


def model_call(spec: ModelSpec, call: Callable[[], T]) -> T:
    """A configured model that cannot be loaded fails the stage at once, naming it (no retries)."""
    from workers.models.runtime import ModelUnavailable

    try:
        return call()
    except ModelUnavailable as exc:
        raise StageError("model_unavailable", str(exc)) from None


def llm_call_rows(ctx: StageContext, result: dict[str, Any], key: str = "") -> list[LlmCall]:
    """The call log of a language stage's result (local calls report seconds, hosted ones ms).
    Ids are derived from (stage, round, item, key, index), so a retried task rewrites the same rows."""
    rows = [_llm_call_row(ctx, result, call, f"{key}:{i}") for i, call in enumerate(result.get("calls") or [])]
    for row in rows:  # counted when made: a retried stage really spent its tokens twice
        metrics.observe_llm_call(row.backend, row.model, row.tokens_in, row.tokens_out, row.cost_usd)
    return rows


def _llm_call_row(ctx: StageContext, result: dict[str, Any], call: dict[str, Any], key: str) -> LlmCall:
    latency_ms = call["latency_ms"] if "latency_ms" in call else 1000.0 * float(call.get("latency_s") or 0.0)
    return LlmCall(
        id=uuid.uuid5(ctx.campaign.id, f"llm:{ctx.stage}:{ctx.round}:{ctx.item}:{key}"),
        tenant_id=ctx.tenant_id,
        campaign_id=ctx.campaign.id,
        stage=ctx.stage,
        round=ctx.round,
        backend=call.get("backend", "local"),
        model=str(call.get("model") or result.get("model") or ""),
        prompt_version=result.get("prompt_version"),
        attempt=str(call.get("attempt") or "first"),
        latency_ms=round(latency_ms, 1),
        tokens_in=int(call.get("tokens_in") or 0),
        tokens_out=int(call.get("tokens_out") or 0),
        cost_usd=call.get("cost_usd"),
    )


def backgrounds(ctx: StageContext, sizes: set[tuple[int, int]]) -> dict[tuple[int, int], Image.Image]:
    """Each canvas's background: its retrieved photo (RetrieveOutput.background_for) cover-cropped, or the brand's
    studio backdrop."""
    from workers.imaging import compositor
    from workers.pipeline.outputs import RetrieveOutput

    retrieved, palette = ctx.output(RetrieveOutput), list(campaign_brand(ctx).palette or [])
    chosen = {c: retrieved.background_for(c) for c in sizes}
    with session_scope() as session:
        keys = {a: tenant_asset(session, ctx.tenant_id, a).storage_key for a in set(chosen.values()) if a}
    sources = {a: load_image(key).convert("RGB") for a, key in keys.items()}
    return {
        c: compositor.cover_crop(sources[a], c) if a else compositor.backdrop(c, palette) for c, a in chosen.items()
    }
