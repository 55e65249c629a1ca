"""Pure parts of the QC and rank stages: product verdicts, the diverse top-k choice, the best of a cluster."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from shared.db.models import Candidate
from shared.qc import QcThresholds
from workers.checks.product import product_checks
from workers.pipeline.rank import best_of_clusters, choose


def cand(key: str, row: int, col: int, aesthetic: float | None, passed: bool = True) -> Candidate:
    placement = {"row": row, "col": col, "canvas": {"width": 1024, "height": 1024}}
    verdict = {"fully_checked": passed}  # every candidate that reaches rank carries QC's policy verdict
    return Candidate(
        id=uuid.uuid4(), layout_key=key, placement=placement, aesthetic=aesthetic, passed=passed, qc={"policy": verdict}
    )


def test_choose_prefers_distinct_cells_then_fills_up() -> None:
    a, b, c = cand("a", 1, 1, 9.0), cand("b", 1, 1, 8.5), cand("c", 2, 2, 7.0)
    failed = cand("f", 3, 3, None, passed=False)
    assert choose([a, b, c, failed], 2) == [a, c]
    assert b.excluded_reason and b.excluded_reason.startswith("diversity")
    assert choose([a, b, c, failed], 3) == [a, c, b]  # not enough distinct cells: repeat one
    low = cand("d", 3, 1, 1.0)
    assert choose([a, c, low], 2) == [a, c] and "below the top 2" in (low.excluded_reason or "")


def test_product_checks_pass_and_fail_with_reasons() -> None:
    limits = QcThresholds()
    good = {"exact_fraction": 1.0, "msssim_edges": 0.99, "delta_e": 0.0, "dino_cosine": 0.99}
    assert all(v["status"] == "pass" for v in product_checks(good, limits))
    bad = {"exact_fraction": 0.4, "msssim_edges": 0.5, "delta_e": 14.0, "dino_cosine": 0.3}
    verdicts = {v["check"]: v for v in product_checks(bad, limits)}
    assert [v["status"] for v in verdicts.values()] == ["fail"] * 4
    assert "40.00%" in verdicts["product_exact"]["reason"]
    assert "14.00" in verdicts["product_colour_delta_e"]["reason"]
    no_dino = {v["check"]: v for v in product_checks({**good, "dino_cosine": None}, limits)}
    assert no_dino["product_dino"]["status"] == "unchecked" and no_dino["product_dino"]["passed"] is None
    assert "ONBRAND_DINOV2_MODEL" in no_dino["product_dino"]["reason"]
    strict = {v["check"]: v for v in product_checks(good, QcThresholds(min_dino=0.995))}
    assert strict["product_dino"]["status"] == "fail"  # the brand's own limit is the one applied


def test_only_the_best_of_a_cluster_is_rankable_and_the_rest_say_why() -> None:
    a, b, c = cand("a", 1, 1, 6.0), cand("b", 1, 1, 8.0), cand("c", 2, 2, 5.0)
    failed = cand("f", 1, 1, None, passed=False)
    dup = SimpleNamespace(
        id="c1",
        members=[str(x.id) for x in (a, b, failed)],
        links=[(str(a.id), str(b.id), "phash distance 2"), (str(b.id), str(failed.id), "phash 0")],
    )
    alone = SimpleNamespace(id="c2", members=[str(c.id)], links=[])
    clusters = {str(a.id): dup, str(b.id): dup, str(failed.id): dup, str(c.id): alone}
    assert best_of_clusters([a, b, c, failed], clusters) == [b, c]
    assert a.excluded_reason and a.excluded_reason.startswith("near-duplicate of b (cluster c1, phash distance 2)")
    assert failed.excluded_reason is None  # its own failure is its reason, set by the policy
    assert a.qc["cluster"] == {
        "id": "c1",
        "size": 3,
        "members": ["a", "b", "f"],
        "best": "b",
        "links": [{"a": "a", "b": "b", "how": "phash distance 2"}, {"a": "b", "b": "f", "how": "phash 0"}],
    }
    assert c.qc["cluster"]["size"] == 1 and c.qc["cluster"]["best"] == "c"


def test_product_checks_on_known_images_identical_and_recoloured() -> None:
    import numpy as np
    from PIL import Image

    from tests.factories import cutout
    from workers.checks import fidelity
    from workers.imaging import composition, compositor

    cut = cutout()
    layout = composition.plan([(512, 512)], cut.size, 3, 3, (0.0,), 0.45, 2.0, cutout=cut).layouts[4]
    layer = composition.place(cut, layout)
    image = compositor.compose(layer, compositor.backdrop((512, 512), ["#1F6FEB"]))
    same = {**fidelity.fidelity(image, layer), "dino_cosine": None}
    assert same["exact_fraction"] == 1.0 and same["msssim_edges"] == pytest.approx(1.0, abs=1e-6)
    assert same["delta_e"] == 0.0
    arr = np.asarray(image).copy()
    opaque = np.asarray(layer)[:, :, 3] == 255
    arr[opaque] = arr[opaque][:, [2, 0, 1]]  # the product's channels rotated: same shape, other colours
    recoloured = {**fidelity.fidelity(Image.fromarray(arr), layer), "dino_cosine": None}
    verdicts = {v["check"]: v for v in product_checks(recoloured, QcThresholds())}
    assert recoloured["delta_e"] > 10 and verdicts["product_colour_delta_e"]["status"] == "fail"
    assert verdicts["product_exact"]["status"] == "fail"
