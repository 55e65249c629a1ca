"""The brand kit API (/v1/brands/{id}/kit) in process: TestClient, real Postgres, local object storage, the
cleanup job run as the worker runs it. Logos (PNG/WebP kept with their alpha, SVG rasterised, unsafe SVGs and
non-images refused, the pixel budget), fonts (the vendored Noto Sans accepted, anything else invalid_font, one per
role), the PATCH's validation, signed download URLs, tenant isolation, and no object outliving its kit entry."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from PIL import Image

from services.gateway.brand_kit import svg
from shared.brand_kit import MAX_LOGOS
from shared.storage import brand_prefix, get_storage
from tests.factories import SentTasks, Tenant, assert_problem, make_brand
from workers.creative.fonts import FONT_DIR
from workers.jobs import cleanup

SVG_LOGO = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 20 10">'
    '<defs><linearGradient id="g"><stop offset="0" stop-color="#ff0000"/></linearGradient></defs>'
    '<rect x="0" y="0" width="10" height="10" fill="url(#g)"/></svg>'
)
XLINK = 'xmlns:xlink="http://www.w3.org/1999/xlink"'
UNSAFE_SVGS = {
    "http image": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    '<image href="http://169.254.169.254/latest" width="10" height="10"/></svg>',
    "file image": f'<svg xmlns="http://www.w3.org/2000/svg" {XLINK} width="10" height="10">'
    '<image xlink:href="file:///etc/passwd" width="10" height="10"/></svg>',
    "relative image": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    '<image href="../../secret.png" width="10" height="10"/></svg>',
    "external fill": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    '<rect width="10" height="10" fill="url(http://example.com/p.svg#g)"/></svg>',
    "css import": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    '<style>@import "http://example.com/a.css";</style></svg>',
    "entity": '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x "boom">]>'
    '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&x;</text></svg>',
    "external entity": '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&x;</text></svg>',
    "script": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>',
    "event handler": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" onload="alert(1)"/>',
    "use explosion": '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><g id="l0"><rect/></g>'
    + "".join(f'<g id="l{i}"><use href="#l{i - 1}"/><use href="#l{i - 1}"/></g>' for i in range(1, 30))
    + "</svg>",
}


def _image(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _logo_with_alpha() -> bytes:
    image = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    image.paste((20, 40, 200, 255), (0, 0, 32, 32))  # left half opaque blue, right half transparent
    return _image(image, "PNG")


def _font_without_cmap() -> bytes:
    """A well-formed TrueType font whose cmap maps no character: nothing could be drawn with it."""
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", "A"])
    builder.setupCharacterMap({})
    pen = TTGlyphPen(None)
    pen.moveTo((0, 0))
    pen.lineTo((0, 500))
    pen.lineTo((500, 0))
    pen.closePath()
    builder.setupGlyf({".notdef": pen.glyph(), "A": pen.glyph()})
    builder.setupHorizontalMetrics({".notdef": (500, 0), "A": (500, 0)})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "Blank", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    buffer = io.BytesIO()
    builder.save(buffer)
    return buffer.getvalue()


def _upload_logo(client: TestClient, tenant: Tenant, brand: str, data: bytes, name: str = "l.png") -> Any:
    return client.post(f"/v1/brands/{brand}/kit/logos", files={"file": (name, data)}, headers=tenant.auth)


def _upload_font(client: TestClient, tenant: Tenant, brand: str, data: bytes, role: str) -> Any:
    files = {"file": ("f.ttf", data, "font/ttf")}
    return client.post(f"/v1/brands/{brand}/kit/fonts", files=files, data={"role": role}, headers=tenant.auth)


def _fetch_png(client: TestClient, url: str) -> Image.Image:
    response = client.get(url)  # the signed URL itself, no API key
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def _objects(tenant: Tenant, brand: str) -> list[str]:
    return get_storage().list_keys(brand_prefix(tenant.id, brand))


def _run_cleanup(sent: SentTasks) -> list[str]:
    """The cleanup tasks the gateway sent after its commits, run as the worker runs them (each once)."""
    done = [cleanup.delete_objects(str(deletion_id)) for (deletion_id,) in sent.named("onbrand.delete_objects")]
    sent.clear()
    return done


def test_png_webp_and_svg_logos_are_stored_as_rgba_png_and_served_signed(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    png = _upload_logo(client, acme, brand, _logo_with_alpha())
    assert png.status_code == 201, png.text
    assert (png.json()["width"], png.json()["height"], png.json()["from_svg"]) == (64, 32, False)
    webp = _upload_logo(client, acme, brand, _image(Image.new("RGB", (40, 20), (250, 200, 0)), "WEBP", lossless=True))
    assert webp.status_code == 201, webp.text
    drawn = _upload_logo(client, acme, brand, SVG_LOGO.encode(), "logo.svg")
    assert drawn.status_code == 201, drawn.text
    assert (drawn.json()["width"], drawn.json()["height"], drawn.json()["from_svg"]) == (svg.LOGO_PX, 512, True)

    kit = client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()
    assert [logo["id"] for logo in kit["logos"]] == [png.json()["id"], webp.json()["id"], drawn.json()["id"]]
    first, second, third = (_fetch_png(client, logo["url"]) for logo in kit["logos"])
    assert first.mode == "RGBA" and first.getpixel((5, 5)) == (20, 40, 200, 255) and first.getpixel((50, 5))[3] == 0
    assert second.mode == "RGBA" and second.getpixel((10, 10)) == (250, 200, 0, 255)
    assert third.mode == "RGBA" and third.size == (1024, 512)
    assert third.getpixel((256, 256)) == (255, 0, 0, 255) and third.getpixel((768, 256))[3] == 0  # alpha kept
    assert client.get(kit["logos"][0]["url"].split("?")[0]).status_code == 403  # unsigned: refused
    keys = _objects(acme, brand)
    assert len(keys) == 4 and sum(k.endswith("source.svg") for k in keys) == 1  # the SVG's source is kept


def test_non_images_unsafe_svgs_and_oversized_images_are_refused_and_leave_nothing(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    for name, document in UNSAFE_SVGS.items():
        refused = assert_problem(_upload_logo(client, acme, brand, document.encode(), "x.svg"), 422, "unsafe_svg")
        assert refused["detail"], name
    assert_problem(_upload_logo(client, acme, brand, b"just some text\n", "x.txt"), 422, "invalid_logo")
    jpeg = _image(Image.new("RGB", (8, 8)), "JPEG")
    assert_problem(_upload_logo(client, acme, brand, jpeg, "x.jpg"), 422, "invalid_logo")
    html = b"<html><body>hi</body></html>"
    assert_problem(_upload_logo(client, acme, brand, html, "x.svg"), 422, "invalid_logo")
    sizeless = b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>'
    assert_problem(_upload_logo(client, acme, brand, sizeless, "x.svg"), 422, "invalid_logo")
    huge = _image(Image.new("1", (10_000, 6_000)), "PNG")  # 60 megapixels, a few kB
    too_big = assert_problem(_upload_logo(client, acme, brand, huge), 413, "payload_too_large")
    assert "60000000 pixels" in too_big["detail"]
    padded = SVG_LOGO.replace("</svg>", "<!--" + "x" * svg.SVG_MAX_BYTES + "--></svg>").encode()
    assert_problem(_upload_logo(client, acme, brand, padded, "x.svg"), 413, "payload_too_large")
    assert client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()["logos"] == []
    assert _objects(acme, brand) == []


def test_a_kit_holds_at_most_five_logos(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand = make_brand(client, acme)
    for i in range(MAX_LOGOS):
        logo = _image(Image.new("RGBA", (8, 8), (i, 0, 0, 128)), "PNG")
        assert _upload_logo(client, acme, brand, logo).status_code == 201
    full = assert_problem(_upload_logo(client, acme, brand, _logo_with_alpha()), 409, "kit_full")
    assert str(MAX_LOGOS) in full["detail"]
    assert len(_objects(acme, brand)) == MAX_LOGOS


def test_fonts_are_validated_and_a_role_holds_one(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand = make_brand(client, acme)
    regular, bold = ((FONT_DIR / name).read_bytes() for name in ("NotoSans-Regular.ttf", "NotoSans-Bold.ttf"))
    first = _upload_font(client, acme, brand, regular, "headline")
    assert first.status_code == 201, first.text
    assert (first.json()["family"], first.json()["style"], first.json()["role"]) == ("Noto Sans", "Regular", "headline")
    for bad in (b"not a font at all", b"wOF2" + regular[4:4000], regular[:2000], _logo_with_alpha()):
        assert_problem(_upload_font(client, acme, brand, bad, "body"), 422, "invalid_font")
    blank = assert_problem(_upload_font(client, acme, brand, _font_without_cmap(), "body"), 422, "invalid_font")
    assert "cmap" in blank["detail"]
    assert_problem(_upload_font(client, acme, brand, regular, "title"), 422, "validation_error")
    body = _upload_font(client, acme, brand, regular, "body")
    assert body.status_code == 201, body.text
    before = set(_objects(acme, brand))
    assert len(before) == 2

    replaced = _upload_font(client, acme, brand, bold, "headline")
    assert replaced.status_code == 201, replaced.text
    kit = client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()
    assert sorted((f["role"], f["style"]) for f in kit["fonts"]) == [("body", "Regular"), ("headline", "Bold")]
    assert client.get(kit["fonts"][0]["url"]).content in (regular, bold)  # served as uploaded
    assert _run_cleanup(sent) == ["deleted"]  # the old headline font, once the replacement committed
    after = set(_objects(acme, brand))
    assert len(after) == 2 and before - after == {k for k in before if first.json()["id"] in k}


def test_patch_validates_strictly_and_merges_rules(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand = make_brand(client, acme)
    url = f"/v1/brands/{brand}/kit"
    body = {"text_colors": ["#112233", "#ffffff"], "button_color": "#00aa00", "rules": {"logo_corner": "bottom-right"}}
    patched = client.patch(url, json=body, headers=acme.auth)
    assert patched.status_code == 200, patched.text
    kit = patched.json()
    assert kit["text_colors"] == ["#112233", "#FFFFFF"] and kit["button_color"] == "#00AA00"
    assert kit["rules"]["logo_corner"] == "bottom-right" and kit["rules"]["clear_space"] == 0.25
    again = client.patch(url, json={"rules": {"min_logo_px": 32, "clear_space": 1}}, headers=acme.auth).json()
    assert again["rules"]["logo_corner"] == "bottom-right" and again["rules"]["min_logo_px"] == 32  # merged
    for bad in (
        {"text_colors": ["#12345"]},
        {"text_colors": ["#000000"] * 7},
        {"button_color": "green"},
        {"rules": {"logo_corner": "middle"}},
        {"rules": {"min_logo_px": "32"}},
        {"rules": {"min_logo_px": 2}},
        {"rules": {"logo_height_frac": 0}},
        {"rules": {"shadow": True}},
        {"logos": []},
    ):
        assert_problem(client.patch(url, json=bad, headers=acme.auth), 422, "validation_error")
    assert client.get(url, headers=acme.auth).json() == again  # nothing of the refused ones was written
    cleared = client.patch(url, json={"button_color": None, "text_colors": []}, headers=acme.auth).json()
    assert cleared["button_color"] is None and cleared["text_colors"] == [] and cleared["rules"] == again["rules"]


def test_another_tenant_gets_404_everywhere(client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks) -> None:
    brand, theirs = make_brand(client, acme), make_brand(client, globex)
    logo = _upload_logo(client, acme, brand, _logo_with_alpha()).json()["id"]
    font = _upload_font(client, acme, brand, (FONT_DIR / "NotoSans-Regular.ttf").read_bytes(), "body").json()["id"]
    kit = client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()
    for owner in (brand, theirs):  # acme's brand, and globex's own brand with acme's logo and font ids
        for response in (
            client.delete(f"/v1/brands/{owner}/kit/logos/{logo}", headers=globex.auth),
            client.delete(f"/v1/brands/{owner}/kit/fonts/{font}", headers=globex.auth),
        ):
            assert_problem(response, 404, "not_found")
    for response in (
        client.get(f"/v1/brands/{brand}/kit", headers=globex.auth),
        client.patch(f"/v1/brands/{brand}/kit", json={"text_colors": []}, headers=globex.auth),
        _upload_logo(client, globex, brand, _logo_with_alpha()),
        _upload_font(client, globex, brand, (FONT_DIR / "NotoSans-Bold.ttf").read_bytes(), "body"),
        client.delete(f"/v1/brands/{uuid.uuid4()}/kit/logos/{logo}", headers=acme.auth),
    ):
        assert_problem(response, 404, "not_found")
    after = client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()
    assert [(x["id"], x["sha256"]) for x in after["logos"] + after["fonts"]] == [
        (x["id"], x["sha256"]) for x in kit["logos"] + kit["fonts"]
    ]
    assert len(_objects(acme, brand)) == 2 and _objects(globex, theirs) == []


def test_deleting_entries_and_the_brand_leaves_no_objects(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    logos = [_upload_logo(client, acme, brand, doc).json()["id"] for doc in (_logo_with_alpha(), SVG_LOGO.encode())]
    font = _upload_font(client, acme, brand, (FONT_DIR / "NotoSans-Regular.ttf").read_bytes(), "headline").json()
    assert len(_objects(acme, brand)) == 4
    assert client.delete(f"/v1/brands/{brand}/kit/logos/{logos[1]}", headers=acme.auth).status_code == 204
    assert_problem(client.delete(f"/v1/brands/{brand}/kit/logos/{logos[1]}", headers=acme.auth), 404, "not_found")
    assert client.delete(f"/v1/brands/{brand}/kit/fonts/{font['id']}", headers=acme.auth).status_code == 204
    assert len(_objects(acme, brand)) == 4  # rows first: the objects go after the commit, in the cleanup job
    assert _run_cleanup(sent) == ["deleted", "deleted"]
    assert [k.rsplit("/", 1)[-1] for k in _objects(acme, brand)] == ["logo.png"]
    kit = client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()
    assert [logo["id"] for logo in kit["logos"]] == [logos[0]] and kit["fonts"] == []

    assert client.delete(f"/v1/brands/{brand}", headers=acme.auth).status_code == 204
    assert _run_cleanup(sent) == ["deleted"]
    assert _objects(acme, brand) == []


def test_a_failed_upload_leaves_no_entry_and_no_object(
    app: Any, acme: Tenant, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = app.state.storage
    real_put = storage.put

    def put(key: str, data: bytes, content_type: str) -> None:
        if key.endswith("source.svg"):
            raise ConnectionError("storage unreachable")
        real_put(key, data, content_type)

    with TestClient(app, raise_server_exceptions=False) as client:
        brand = make_brand(client, acme)
        monkeypatch.setattr(storage, "put", put)
        failed = _upload_logo(client, acme, brand, SVG_LOGO.encode(), "logo.svg")  # the PNG is written, then this
        assert_problem(failed, 500, "internal_error")
        assert client.get(f"/v1/brands/{brand}/kit", headers=acme.auth).json()["logos"] == []
    assert _objects(acme, brand) == []  # the rollback hook deleted the PNG
