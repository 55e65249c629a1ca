"""shared.presets: what a stored size's preset keeps free, the size a result was made for, ranks per
(product, size), and the CLI's --size naming a preset."""

from __future__ import annotations

import pytest
import typer

from shared.cli.campaigns import parse_size
from shared.presets import PRESETS, result_size, size_ranks, zones_of


def test_every_preset_zone_lies_on_its_canvas() -> None:
    for preset in PRESETS.values():
        for zone in preset.safe_zones:
            assert 0 <= zone.x and 0 <= zone.y and zone.width > 0 and zone.height > 0, preset.name
            assert zone.x + zone.width <= 1 + 1e-9 and zone.y + zone.height <= 1 + 1e-9, preset.name


def test_a_stored_size_has_its_preset_zones_and_an_explicit_one_none() -> None:
    assert [z["label"] for z in zones_of({"preset": "story", "width": 1080, "height": 1920})] == [
        "platform-header",
        "platform-footer",
    ]
    assert zones_of({"width": 1080, "height": 1920}) == [] and zones_of({"preset": "meta-feed"}) == []


def test_a_result_names_its_canvas_and_the_preset_that_asked_for_it() -> None:
    sizes = [{"aspect": "1:1", "width": 1080, "height": 1080}, {"preset": "iab-728x90", "width": 728, "height": 90}]
    assert result_size(sizes, {"canvas": {"width": 728, "height": 90}}) == {
        "width": 728,
        "height": 90,
        "label": "728x90",
        "preset": "iab-728x90",
    }
    assert result_size(sizes, {"canvas": {"width": 1080, "height": 1080}})["aspect"] == "1:1"  # type: ignore[index]
    assert result_size([], {"canvas": {"width": 64, "height": 32}}) == {"width": 64, "height": 32, "label": "64x32"}
    assert result_size(sizes, {"x": 1}) is None  # a placement naming no canvas


def test_ranks_count_within_each_product_and_size() -> None:
    groups = [("a", "1x1"), ("a", "1x1"), ("a", "9x16"), ("b", "1x1"), ("a", "9x16")]
    assert size_ranks(groups) == [1, 2, 1, 1, 2]


def test_the_cli_size_option_takes_a_preset() -> None:
    assert parse_size("story") == {"preset": "story"} and parse_size("iab-300x250") == {"preset": "iab-300x250"}
    assert parse_size("300x250") == {"width": 300, "height": 250} and parse_size("4:5") == {"aspect": "4:5"}
    with pytest.raises(typer.BadParameter, match="a preset"):
        parse_size("billboard")
