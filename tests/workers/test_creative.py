"""The brand-kit overlay renderer (workers/creative): layout outside the product, measured WCAG contrast,
shaped right-to-left text, font validation, and the OCR read-back with the real rapidocr weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, features

from workers.creative import contrast, fonts, render, text, verify
from workers.creative.schema import BrandKit, Copy, Creative, Element, OverlayRequest, Zone
from workers.models import tesseract

HEADLINE_DE = "Frische Laufschuhe für jeden Tag"
CTA_EN = "Shop now"
CTA_AR = "تسوقوا الآن"  # "shop now": two words of clearly different widths


def scene(w: int, h: int, product: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """A sky-to-sand gradient with an elliptical 'product' (and its boolean mask)."""
    y = np.linspace(0, 1, h)[:, None, None]
    x = np.linspace(0, 1, w)[None, :, None]
    rgb = (np.array([40, 90, 140]) * (1 - y) + np.array([230, 200, 160]) * y + 20 * x).clip(0, 255)
    image = Image.fromarray(rgb.astype(np.uint8))
    mask_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_img).ellipse(product, fill=255)
    image.paste((200, 40, 40), mask=mask_img)
    return image, np.asarray(mask_img) > 0


def logo() -> Image.Image:
    mark = Image.new("RGBA", (200, 80), (0, 0, 0, 0))
    ImageDraw.Draw(mark).rounded_rectangle((0, 0, 199, 79), radius=20, fill=(20, 60, 200, 255))
    return mark


def assert_product_untouched(creative: Creative, image: Image.Image, mask: np.ndarray) -> None:
    out, src = np.asarray(creative.image), np.asarray(image)
    assert np.array_equal(out[mask], src[mask])
    for t in creative.layout.texts:
        x0, y0, x1, y1 = t.box
        assert not mask[y0:y1, x0:x1].any(), f"{t.element} box {t.box} covers the product"
    changed = (out != src).any(axis=2)
    assert changed.any() and not (changed & mask).any()


@pytest.fixture(scope="module", params=[(1080, 1080, (380, 380, 700, 760)), (728, 90, (470, 4, 560, 86))])
def german(request: pytest.FixtureRequest) -> tuple[Creative, Image.Image, np.ndarray]:
    w, h, product = request.param
    image, mask = scene(w, h, product)
    made = render.render(OverlayRequest(image, mask, Copy(HEADLINE_DE, CTA_EN), BrandKit(logo=logo())))
    print(f"\n{w}x{h}: render {made.layout.render_ms} ms, fonts {[t.font_px for t in made.layout.texts]} px")
    return made, image, mask


def test_german_headline_english_cta_reads_back_with_contrast_outside_the_product(
    german: tuple[Creative, Image.Image, np.ndarray],
) -> None:
    creative, image, mask = german
    record = creative.layout
    assert record.ok and record.reasons == [] and creative.image.size == image.size
    assert [t.element for t in record.texts] == [Element.HEADLINE, Element.CTA]
    assert all(t.contrast >= 4.5 for t in record.texts)
    assert record.logo is not None and record.logo.box[3] - record.logo.box[1] >= 24
    assert_product_untouched(creative, image, mask)
    # The recorded contrast is what the pixels say: re-measured on the output, around the glyphs.
    for t in record.texts:
        assert contrast.worst(t.color, np.asarray(creative.image), t.ink_box) < t.contrast + 0.01  # glyph AA
    checked = verify.verify(creative)
    print(f"OCR {checked.ocr_ms} ms: {[(c.compared, c.status) for c in checked.checks]}")
    assert checked.status == "passed", checked.checks
    assert [c.compared for c in checked.checks] == [
        ("frischelaufschuhefürjedentag", "frischelaufschuhefürjedentag"),
        ("shopnow", "shopnow"),
    ]


def test_templates_lay_out_each_size_sensibly() -> None:
    sizes = [
        (728, 90, "wide"),
        (160, 600, "tall"),
        (1080, 1920, "tall"),
        (1080, 1080, "square"),
        (1080, 1350, "square"),
    ]
    for w, h, name in sizes:
        product = (round(0.4 * w), round(0.45 * h), round(0.6 * w), round(0.6 * h))
        image, mask = scene(w, h, product)
        copy = Copy(HEADLINE_DE, CTA_EN, legal="Angebot gültig bis 31.12.")
        made = render.render(OverlayRequest(image, mask, copy, BrandKit(logo=logo())))
        assert made.layout.ok and made.layout.template == name, (w, h, made.layout.reasons)
        head, cta, legal = made.layout.texts
        assert made.layout.logo is not None
        lx0, ly0, lx1, ly1 = made.layout.logo.box
        clear = round(0.25 * (ly1 - ly0))  # LayoutRules.clear_space: no text inside the logo's clear space
        for t in made.layout.texts:
            assert (
                t.box[2] <= lx0 - clear or t.box[0] >= lx1 + clear or t.box[3] <= ly0 - clear or t.box[1] >= ly1 + clear
            )
        assert head.font_px >= cta.font_px >= 12 and legal.font_px < cta.font_px
        if name == "wide":  # one row: logo, headline, CTA button on the right
            assert made.layout.logo and made.layout.logo.box[2] <= head.box[0] and head.box[2] <= cta.box[0]
        else:  # headline above the product, CTA below it
            assert head.box[3] <= product[1] and product[3] <= cta.box[1] < legal.box[1]


def test_busy_background_gets_a_scrim_or_another_colour_and_keeps_contrast() -> None:
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8))
    kit = BrandKit(text_colors=((255, 255, 255),))  # white alone is unreadable over noise
    made = render.render(OverlayRequest(noise, (250, 250, 350, 350), Copy(HEADLINE_DE, CTA_EN), kit))
    head = made.layout.texts[0]
    assert made.layout.ok and head.contrast >= 4.5
    assert head.backing == "scrim" and made.layout.scrim and 0 < head.scrim_alpha <= 0.9
    # Independently: the scrimmed scene behind the headline gives at least the recorded contrast.
    x0, y0, x1, y1 = head.box
    behind = np.asarray(noise).astype(np.float64)
    behind[y0:y1, x0:x1] = np.round(behind[y0:y1, x0:x1] * (1 - head.scrim_alpha))
    assert contrast.worst(head.color, behind.astype(np.uint8), head.ink_box) >= head.contrast >= 4.5
    # Without the scrim the same white text would fail.
    assert contrast.worst((255, 255, 255), np.asarray(noise), head.ink_box) < 4.5


def test_colour_change_when_a_kit_colour_fails() -> None:
    light = Image.new("RGB", (600, 600), (240, 240, 235))
    kit = BrandKit(text_colors=((255, 255, 255), (20, 30, 90)))  # white on near-white fails, navy passes
    made = render.render(OverlayRequest(light, (250, 250, 350, 350), Copy(HEADLINE_DE, CTA_EN), kit))
    head = made.layout.texts[0]
    assert head.color == (20, 30, 90) and head.backing == "none" and head.contrast >= 4.5


def test_impossible_layout_fails_with_reasons() -> None:
    image, _ = scene(600, 600, (0, 0, 1, 1))
    everything = np.ones((600, 600), bool)
    made = render.render(OverlayRequest(image, everything, Copy(HEADLINE_DE, CTA_EN), BrandKit(logo=logo())))
    assert not made.layout.ok and made.layout.texts == []
    assert any(r.startswith("headline: no room in the canvas outside the product") for r in made.layout.reasons)
    assert any(r.startswith("cta: no room") for r in made.layout.reasons)
    assert any(r.startswith("logo: no corner has room") for r in made.layout.reasons)
    assert np.array_equal(np.asarray(made.image), np.asarray(image))  # nothing drawn
    with pytest.raises(ValueError, match="layout failed"):
        verify.verify(made)


def test_safe_zones_hold_the_text() -> None:
    image, mask = scene(1080, 1080, (300, 300, 780, 780))
    zones = (Zone("headline", 0.05, 0.02, 0.9, 0.2), Zone("cta", 0.3, 0.8, 0.4, 0.15))
    made = render.render(OverlayRequest(image, mask, Copy(HEADLINE_DE, CTA_EN), safe_zones=zones))
    for t, zone in zip(made.layout.texts, zones, strict=True):
        zx0, zy0, zx1, zy1 = zone.box(1080, 1080)
        assert zx0 <= t.box[0] and zy0 <= t.box[1] and t.box[2] <= zx1 and t.box[3] <= zy1
    tiny = (Zone("text", 0.0, 0.0, 0.05, 0.05),)
    failed = render.render(OverlayRequest(image, mask, Copy(HEADLINE_DE, CTA_EN), safe_zones=tiny))
    assert not failed.layout.ok and "headline: no room in its safe zones" in failed.layout.reasons[0]


def test_arabic_cta_is_shaped_right_to_left_and_read_back_by_tesseract(monkeypatch: pytest.MonkeyPatch) -> None:
    assert features.check("raqm"), "Pillow without libraqm: Arabic would be drawn unshaped, left to right"
    image, mask = scene(1080, 1080, (380, 380, 700, 760))
    made = render.render(OverlayRequest(image, mask, Copy(HEADLINE_DE, CTA_AR), BrandKit()))
    cta = made.layout.texts[1]
    assert (
        made.layout.ok and cta.direction == "rtl" and cta.script == "Arabic" and cta.font.startswith("NotoSansArabic")
    )
    # Glyph order: the logical first word is drawn on the right. Split the CTA's ink at its widest gap.
    x0, y0, x1, y1 = cta.ink_box
    ink = np.asarray(made.image)[y0:y1, x0:x1].astype(int)
    light = (ink.sum(axis=2) > 600).any(axis=0)  # white text on the dark button
    gaps = np.flatnonzero(~light)
    runs = np.split(gaps, np.flatnonzero(np.diff(gaps) > 1) + 1)
    gap = max(runs, key=len)
    left, right = gap[0], len(light) - gap[-1] - 1
    font = fonts.load(str(fonts.FONT_DIR / cta.font), cta.font_px)
    first, last = (font.getbbox(wd, direction="rtl") for wd in CTA_AR.split())
    first_w, last_w = first[2] - first[0], last[2] - last[0]
    assert abs(first_w - last_w) > 40  # the words are told apart by width
    assert abs(right - first_w) <= 6 and abs(left - last_w) <= 6, (left, right, first_w, last_w)  # AA fringe
    # Shaped: joined contextual forms, not the isolated letters of Pillow's basic layout.
    basic = ImageFont.truetype(str(fonts.FONT_DIR / cta.font), cta.font_px, layout_engine=ImageFont.Layout.BASIC)
    assert basic.getbbox(CTA_AR)[2] - basic.getbbox(CTA_AR)[0] != x1 - x0
    assert "ara" in tesseract.installed(), "Tesseract's Arabic data missing: apt-get install tesseract-ocr-ara"
    checked = verify.verify(made)
    head, arabic = checked.checks
    assert (head.reader, arabic.reader) == ("pp-ocr", "tesseract") and "tesseract" in checked.model
    assert head.status == arabic.status == checked.status == "passed", checked
    assert arabic.compared == (verify.normalise(CTA_AR), verify.normalise(CTA_AR))
    # Without the Arabic model the CTA is unchecked, never passed.
    monkeypatch.setattr(tesseract, "installed", lambda: frozenset({"eng"}))
    unread = verify.verify(made)
    assert unread.checks[1].status == unread.status == "unchecked" and unread.checks[1].read == ""
    assert unread.checks[1].reason.startswith("unchecked: no OCR model for Arabic (Tesseract with tesseract-ocr-ara")


def test_arabic_vowel_marks_are_not_compared_but_letters_are() -> None:
    assert verify.normalise("اشترِ الآن") == verify.normalise("اشتر الآن")  # kasra: optional, OCR drops it
    assert verify.normalise("اشتر الآن") != verify.normalise("اشتري الآن")  # a letter more is another word
    assert verify.normalise("Jetzt kaufen!") == verify.normalise("JETZT KAUFEN") != verify.normalise("Jetzt kaufe")


def test_no_layout_without_text_shaping(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's wheel loads FriBiDi from the system; without it raqm is off and RTL text would come out LTR.
    monkeypatch.setattr(fonts, "shaping_available", lambda: False)
    image, mask = scene(600, 600, (200, 200, 400, 400))
    made = render.render(OverlayRequest(image, mask, Copy(HEADLINE_DE, CTA_AR)))
    assert (
        not made.layout.ok and made.layout.reasons == [fonts.SHAPING_MISSING] and "libfribidi0" in fonts.SHAPING_MISSING
    )


def test_cjk_breaks_by_character_and_needs_a_font_that_covers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces, joiner = text.units("今日は、新しい靴。iPhone 16も", "Han")
    assert joiner == "" and pieces[:3] == ["今", "日", "は、"] and "靴。" in pieces and "iPhone " in pieces
    assert text.units("Jetzt kaufen", "Latin") == (["Jetzt", "kaufen"], " ")
    monkeypatch.setattr(fonts, "SYSTEM_FONT_DIRS", ())  # only the vendored Latin and Arabic faces
    image, mask = scene(600, 600, (200, 200, 400, 400))
    made = render.render(OverlayRequest(image, mask, Copy("新しい靴", CTA_EN), BrandKit()))
    assert not made.layout.ok
    assert made.layout.reasons == ["headline: no font covers its characters (Han script); upload a font that does"]


def test_a_japanese_headline_is_drawn_with_the_system_cjk_face_and_read_back() -> None:
    # The worker images and `make test` install Debian's fonts-noto-cjk; PP-OCR reads CJK itself.
    assert any((d / f).exists() for d in fonts.SYSTEM_FONT_DIRS for f in fonts.SYSTEM_CJK), "apt: fonts-noto-cjk"
    image, mask = scene(1080, 1080, (380, 380, 700, 760))
    made = render.render(OverlayRequest(image, mask, Copy("毎日はしれる新しい靴", "今すぐ購入"), BrandKit()))
    assert made.layout.ok, made.layout.reasons
    assert all(t.font.startswith("NotoSansCJK") and t.contrast >= 4.5 for t in made.layout.texts)
    checked = verify.verify(made)
    assert checked.status == "passed" and {c.reader for c in checked.checks} == {"pp-ocr"}, checked.checks


def test_validate_font_accepts_fonts_and_rejects_everything_else() -> None:
    data = (fonts.FONT_DIR / "NotoSans-Bold.ttf").read_bytes()
    info = fonts.validate_font(data)
    assert info.family == "Noto Sans" and info.glyphs > 1000 and info.format == "TrueType"
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    for bad, why in [
        (png.getvalue(), "not a font"),
        (b"wOF2" + data[4:100], "WOFF2"),
        (data[:2000], "does not parse"),
        (b"", "got nothing"),
    ]:
        with pytest.raises(fonts.FontError, match=why):
            fonts.validate_font(bad)


def test_default_fonts_ship_with_their_licence() -> None:
    shipped = sorted(p.name for p in fonts.FONT_DIR.iterdir())
    assert shipped == [
        "NotoSans-Bold.ttf",
        "NotoSans-Regular.ttf",
        "NotoSansArabic-Bold.ttf",
        "NotoSansArabic-Regular.ttf",
        "OFL.txt",
    ]
    assert "SIL Open Font License, Version 1.1" in (fonts.FONT_DIR / "OFL.txt").read_text()
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"workers.creative" = ["fonts/*.ttf", "fonts/*.txt"]' in pyproject
