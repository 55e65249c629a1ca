"""A second, independent system on S3 object storage (moto's server: a real HTTP S3 endpoint that
does not check signatures or expiry) and its own Redis db, with the rules LLM backend (the LLM path
is covered by test_e2e): a campaign naming an opaque studio shot (GrabCut segmentation)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import boto3
import httpx
import numpy as np
import pytest
from PIL import Image

from shared.cli.demo.library import build_library
from shared.cli.demo.run import upload_library
from tests.factories import moto_server, s3_client, wait_terminal
from tests.system import System, running_system

pytestmark = pytest.mark.slow
BUCKET = "onbrand-e2e"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        s3_client(url).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture(scope="module")
def s3_system(stack_urls: dict[str, str], moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {
        "ONBRAND_STORAGE_BACKEND": "s3",
        "ONBRAND_S3_BUCKET": BUCKET,
        "ONBRAND_S3_PREFIX": "e2e",
        "ONBRAND_S3_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ONBRAND_LLM_BACKEND": "rules",
        "ONBRAND_REDIS_URL": stack_urls["redis_url"].rsplit("/", 1)[0] + "/3",
    }
    with running_system(stack_urls, tmp_path_factory.mktemp("s3system"), "e2e_s3", **env) as running:
        yield running


def fetch(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, url
    return Image.open(io.BytesIO(response.content))


def test_named_opaque_product_on_s3(s3_system: System, moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    tenant = s3_system.tenant("s3")
    api = httpx.Client(base_url=s3_system.url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=30)
    brand = api.post("/v1/brands", json={"name": "Mugs", "palette": ["#1D3557", "#F1FAEE"]}).json()
    assets = upload_library(api, brand["id"], build_library(tmp_path_factory.mktemp("lib")))
    mug = next(a for a in assets if a["kind"] == "product" and not a["has_alpha"])
    assert mug["url"].startswith(moto_url)  # a presigned S3 URL, not the gateway's /files
    created = api.post(
        "/v1/campaigns",
        json={
            "brand_id": brand["id"],
            "brief": "the mug on a kitchen counter",
            "product_asset_ids": [mug["id"]],
            "sizes": [{"width": 1080, "height": 1350}],
        },
    )
    assert created.status_code == 202, created.text
    body = wait_terminal(api, created.json()["id"])
    assert body["status"] == "completed", body.get("error")
    assert body["state"]["segment"]["method"] == "grabcut"
    assert body["state"]["retrieve"]["product_source"] == "named"
    assert body["state"]["decompose"]["backend"] == "rules"
    for result in body["results"]:
        assert result["image_url"].startswith(moto_url)
        image, layer = np.asarray(fetch(result["image_url"]).convert("RGB")), np.asarray(fetch(result["layer_url"]))
        assert image.shape == (1350, 1080, 3)
        opaque = layer[..., 3] == 255
        assert opaque.sum() > 1000 and np.array_equal(image[opaque], layer[..., :3][opaque])
    keys = [
        o["Key"]
        for o in boto3.client(
            "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).list_objects_v2(Bucket=BUCKET, Prefix="e2e/")["Contents"]
    ]
    assert sum(k.endswith("/candidate.png") for k in keys) == 27
