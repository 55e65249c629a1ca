"""text_artefacts by OCR: real composites from the real compositor and the real PP-OCR weights, so each
test knows the truth it checks (where lettering was drawn, whose it is)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.factories import cutout
from workers.checks import text_ocr
from workers.checks.text_ocr import Background
from workers.imaging import composition, compositor
from workers.models import ocr

PALETTE = ["#1E4FA0", "#F2C94C"]
SIZE = 768


class Counting:
    """The real reader, counting how often (and how many pixels) it reads."""

    def __init__(self, reader: ocr.OcrReader) -> None:
        self.reader, self.calls, self.pixels = reader, 0, 0

    @property
    def name(self) -> str:
        return self.reader.name

    def read(self, rgb: np.ndarray) -> list[Any]:
        self.calls += 1
        self.pixels += rgb.shape[0] * rgb.shape[1]
        return self.reader.read(rgb)


@pytest.fixture(scope="module")
def reader() -> ocr.OcrReader:
    return ocr.load()


@pytest.fixture
def counting(reader: ocr.OcrReader) -> Counting:
    return Counting(reader)


def scene(background: Image.Image, index: int = 13, share: float = 0.3) -> tuple[Image.Image, Image.Image]:
    """(layer, candidate): the labelled bottle placed by the planner and composited on ``background``."""
    cut = cutout()
    layout = composition.plan([(SIZE, SIZE)], cut.size, cutout=cut, scale_share=share).layouts[index]
    layer = composition.place(cut, layout)
    return layer, compositor.compose(layer, background)


def backdrop() -> Image.Image:
    return compositor.backdrop((SIZE, SIZE), PALETTE)


def brand_photo() -> Image.Image:
    """A 'library photo' that carries the brand's own sign: a cafe wall with lettering on it."""
    rng = np.random.default_rng(4)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = np.dstack([120 + 80 * xs / SIZE, 90 + 40 * ys / SIZE, 70 + 30 * xs / SIZE])
    img += rng.normal(0, 4, img.shape)
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(photo).text((40, 40), "CAFE ROMA", fill=(250, 245, 230), font=ImageFont.load_default(size=44))
    return photo


def letter(image: Image.Image, text: str, at: tuple[int, int], fill: tuple[int, int, int]) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).text(at, text, fill=fill, font=ImageFont.load_default(size=34))
    return out


def test_the_reader_reads_the_products_label_and_nothing_on_a_blank(reader: ocr.OcrReader) -> None:
    label = np.asarray(cutout().convert("RGB"))
    words = reader.read(label)
    assert any("BRAND" in w.text for w in words), words
    assert all(0 < w.score <= 1 and w.box[0] < w.box[2] and w.box[1] < w.box[3] for w in words)
    assert reader.read(np.full((200, 300, 3), 200, np.uint8)) == []
    assert ocr.load() is reader  # one reader per process
    with pytest.raises(ValueError, match="rgb: expected"):
        reader.read(np.zeros((10, 10), np.uint8))


def test_a_clean_composite_passes_without_reading_anything(counting: Counting) -> None:
    bg = backdrop()
    for index in (1, 13, 26):  # r1c1, r2c2, r3c3 +15 degrees: shadows in every position
        layer, cand = scene(bg, index)
        changed = text_ocr.changed_pixels(np.asarray(cand), np.asarray(bg), text_ocr._inputs(cand, layer)[1])
        assert changed.sum() == 0  # the compositor's shadows are all explained by shading
        v = text_ocr.check(cand, layer, Background(bg, True, "the studio backdrop"), counting)
        assert v["status"] == "pass" and v["value"] == 0 and "nothing to read" in v["reason"]
    assert counting.calls == 0


@pytest.mark.parametrize(
    ("at", "fill"),
    [((420, 60), (30, 30, 30)), ((40, 300), (150, 150, 150)), ((470, 600), (60, 60, 60))],
    ids=["dark-on-wall", "grey-on-wall", "in-the-shadow"],
)
def test_stray_lettering_on_the_background_fails(counting: Counting, at: tuple[int, int], fill: Any) -> None:
    bg = backdrop()
    layer, cand = scene(bg)
    v = text_ocr.check(letter(cand, "SALE 50% OFF", at, fill), layer, Background(bg, True, "the backdrop"), counting)
    assert v["status"] == "fail" and v["value"] == 1, v
    assert "SALE" in v["reason"] and "differs from the backdrop" in v["reason"]
    assert counting.calls == 1 and counting.pixels < SIZE * SIZE / 2  # only the box around the change


def test_the_products_label_is_not_an_artefact_in_any_mode(counting: Counting) -> None:
    bg = backdrop()
    layer, cand = scene(bg, share=0.45)
    assert any("BRAND" in w.text for w in counting.reader.read(np.asarray(cand)))  # the label is legible
    for background in (Background(bg, True, "the backdrop"), Background(bg, False, "a reference"), None):
        v = text_ocr.check(cand, layer, background, counting)
        assert v["status"] == "pass", (background, v)


def test_the_brand_photos_own_text_is_the_brands(counting: Counting) -> None:
    photo = brand_photo()
    layer, cand = scene(photo)
    verbatim = text_ocr.check(cand, layer, Background(photo, True, "brand photo p1"), counting)
    assert verbatim["status"] == "pass" and counting.calls == 0
    repainted = text_ocr.check(cand, layer, Background(photo, False, "brand photo p1"), counting)
    assert repainted["status"] == "pass" and "1 line(s) there" in repainted["reason"]
    unknown = text_ocr.check(cand, layer, None, counting)  # a generated scene: nobody's sign is the brand's
    assert unknown["status"] == "fail" and "CAFE" in unknown["reason"]
    stray = letter(cand, "FREE GIFT", (420, 660), (255, 255, 255))
    assert text_ocr.check(stray, layer, Background(photo, False, "brand photo p1"), counting)["status"] == "fail"


def test_bad_arguments_are_named(reader: ocr.OcrReader) -> None:
    bg = backdrop()
    layer, cand = scene(bg)
    with pytest.raises(ValueError, match="^layer: expected an RGBA"):
        text_ocr.check(cand, layer.convert("RGB"), None, reader)
    with pytest.raises(ValueError, match="^candidate: expected a PIL image of size"):
        text_ocr.check(cand.resize((100, 100)), layer, None, reader)
    with pytest.raises(ValueError, match="^background: expected size"):
        text_ocr.check(cand, layer, Background(bg.resize((100, 100)), True, "x"), reader)


def test_per_candidate_cost_of_a_composite(reader: ocr.OcrReader) -> None:
    bg = compositor.backdrop((1024, 1024), PALETTE)
    cut = cutout()
    layout = composition.plan([(1024, 1024)], cut.size, cutout=cut, scale_share=0.45).layouts[13]
    layer = composition.place(cut, layout)
    cand, known = compositor.compose(layer, bg), Background(bg, True, "the studio backdrop")
    text_ocr.check(cand, layer, known, reader)
    start = time.perf_counter()
    for _ in range(5):
        v = text_ocr.check(cand, layer, known, reader)
    ms = (time.perf_counter() - start) / 5 * 1000
    start = time.perf_counter()
    whole = text_ocr.check(cand, layer, None, reader)
    full = (time.perf_counter() - start) * 1000
    print(f"\ntext_artefacts on 1024x1024: {ms:.0f} ms with the known backdrop, {full:.0f} ms reading it whole")
    assert v["status"] == whole["status"] == "pass"
    assert ms < 1000  # sanity bound only (~40-90 ms measured); the point is that no OCR runs
