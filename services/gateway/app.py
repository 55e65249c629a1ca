"""The REST gateway: `onbrand gateway` runs create_app() under uvicorn (factory=True)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from PIL import Image

from services.gateway import errors, files, openapi_problems, storable, system
from services.gateway.assets.endpoints import router as assets_router
from services.gateway.brand_kit.endpoints import router as brand_kit_router
from services.gateway.brands.endpoints import router as brands_router
from services.gateway.campaigns.endpoints import router as campaigns_router
from services.gateway.delivery_targets.endpoints import router as delivery_targets_router
from services.gateway.guardrails.endpoints import router as guardrails_router
from services.gateway.keys.endpoints import router as keys_router
from services.gateway.limits.endpoints import router as limits_router
from services.gateway.limits.rate import RateLimitHeadersMiddleware
from services.gateway.middleware import BodyLimitMiddleware, MetricsMiddleware
from services.gateway.presets.endpoints import router as presets_router
from services.gateway.review_page.endpoints import install as install_review_page
from services.gateway.reviews.endpoints import router as reviews_router
from services.gateway.webhook_endpoints.endpoints import router as webhook_endpoints_router
from shared import heap, logs, queue, tracing
from shared.config import Settings, get_settings
from shared.db import aio
from shared.key_cache import KeyCache
from shared.storage import build_storage

# Room for the multipart framing and the metadata part around an upload of max_upload_bytes;
# the file itself is checked exactly by the assets service.
MULTIPART_OVERHEAD = 1024 * 1024

DESCRIPTION = (
    "Send a campaign brief and product photos; get back ranked on-brand images in which the product "
    "pixels are exactly the product. Authenticate with `Authorization: Bearer <api key>`. Errors are "
    "RFC 9457 `application/problem+json` with a stable `code`."
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await aio.close_all()  # the async pool's connections (opened on the first read or creation)
    await queue.close_async_brokers()  # the creations' Redis client (opened on the first)
    await app.state.key_cache.close()  # its subscription to key changes (started on the first authenticated request)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Process-wide Pillow guard (one gateway app per process); the assets service also checks
    # width x height from the header before decoding.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    # FastAPI's own OpenTelemetry spans (the request's SERVER span, joined to an incoming traceparent,
    # and its dependency/endpoint spans): recorded once shared.tracing installs a provider, no-op
    # otherwise. Request metrics are Prometheus (middleware), so FastAPI's OTel metrics are off.
    app = FastAPI(
        title="Onbrand",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry={"tracing": True, "operation_spans": True, "metrics": False, "logs": False},
        # Every route: text Postgres cannot store (NUL, lone surrogates) is a 422 here, not a 500 there.
        dependencies=[Depends(storable.reject_unstorable_text)],
    )
    app.state.settings = settings
    app.state.storage = build_storage(settings)
    app.state.key_cache = KeyCache(settings.auth_cache_ttl_s)  # services/gateway/deps.py get_caller
    errors.install(app)
    openapi_problems.install(app)  # the 422s documented as the problem+json they are
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(RateLimitHeadersMiddleware)  # RateLimit fields on every authenticated response
    app.add_middleware(MetricsMiddleware)  # added last = outermost: it also sees the 413s above
    # Matched in this order, route by route (FastAPI has no prefix short-cut; it cost a quarter of an authenticated
    # request's CPU for the last router): probes, then what clients poll and submit most, then the rest.
    for router in (
        system.router,
        campaigns_router,
        brands_router,
        reviews_router,
        assets_router,
        files.router,
        brand_kit_router,
        webhook_endpoints_router,
        delivery_targets_router,
        guardrails_router,
        keys_router,
        limits_router,
        presets_router,
    ):
        app.include_router(router)
    install_review_page(app)  # /review/{token}: HTML for review-link holders, its own error pages
    return app


def serve_app() -> FastAPI:
    """What `onbrand gateway` serves: the app, in a process whose logging and tracing it sets up."""
    settings = get_settings()
    logs.configure(settings)
    tracing.setup(settings, "onbrand-gateway")
    app = create_app(settings)
    heap.freeze_start_up_heap()  # full collections then skip the app and its modules: a third of the p99
    return app
