"""Mask-quality checks against the source photo, measured on the labelled sets.

seg_set: every true mask passes and every leaked / clipped mask fails on the held-out split (the
thresholds were set on "tune"); the QC set's (workers.evaluation.qc_set) leaked and clipped source
masks fail and its clean ones pass. Rates, not single examples: a check that passed everything or
failed everything would fail here.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from workers.checks import mask_quality
from workers.evaluation import seg_set

HELDOUT = [s for s in seg_set.samples("heldout") if s.background != "alpha"]


def _fails(sample: seg_set.Sample, mask: np.ndarray) -> bool:
    """Flagged: a gating failure or an advisory doubt (the detectors' raw verdict)."""
    return not mask_quality.check(np.asarray(sample.image), mask).clean


def test_true_masks_pass_on_heldout() -> None:
    failed = [s.name for s in HELDOUT if _fails(s, s.mask)]
    assert not failed, f"clean masks failed (false positives): {failed}"


@pytest.mark.parametrize(("defect", "min_rate"), [("leaked", 1.0), ("clipped", 0.95), ("hole_filled", 0.6)])
def test_wrong_masks_fail_on_heldout(defect: str, min_rate: float) -> None:
    wrong = [(s, seg_set.wrong_mask(s, defect)) for s in HELDOUT]
    cases = [(s, m) for s, m in wrong if m is not None]
    caught = [s.name for s, m in cases if _fails(s, m)]
    assert len(cases) >= 5
    assert len(caught) / len(cases) >= min_rate, f"{defect}: caught {len(caught)} of {len(cases)}"


def test_reasons_name_the_defect() -> None:
    sample = next(s for s in HELDOUT if s.name == "heldout/studio_white/box")
    leaked = mask_quality.check(np.asarray(sample.image), seg_set.wrong_mask(sample, "leaked"))  # type: ignore[arg-type]
    clipped = mask_quality.check(np.asarray(sample.image), seg_set.wrong_mask(sample, "clipped"))  # type: ignore[arg-type]
    assert any(r.startswith("leaked_mask") for r in leaked.reasons), leaked.reasons
    assert any(r.startswith("clipped_mask") for r in clipped.failures), clipped.failures  # gating


@functools.cache
def _qc_set_verdicts() -> list[tuple[str | None, bool, bool]]:
    """(defect, clean, ok) per QC-set source mask: no doubt at all, no gating failure."""
    from workers.evaluation import qc_set

    picked = [s for s in qc_set.samples("heldout") if s.defect in (None, "leaked_mask", "clipped_mask")]
    found = []
    for s in picked:
        q = mask_quality.check(np.asarray(s.source), np.where(s.mask >= 128, 255, 0).astype(np.uint8))
        found.append((s.defect, q.clean, q.ok))
    return found


def test_qc_set_leaked_and_clipped_source_masks_fail() -> None:
    bad = [clean for defect, clean, _ in _qc_set_verdicts() if defect is not None]
    assert len(bad) >= 10
    assert sum(not clean for clean in bad) / len(bad) >= 0.9, f"caught {sum(not c for c in bad)} of {len(bad)}"


def test_qc_set_clean_source_masks_never_fail_a_gating_check() -> None:
    """The plain-sweep outline measure only advises (below), so no clean product is refused."""
    assert all(ok for defect, _, ok in _qc_set_verdicts() if defect is None)


@pytest.mark.xfail(
    strict=True,
    reason="open: white products on the QC set's white sweep (label_box, sneaker) read as leaks to the outline "
    "measure: 54 of 66 clean source masks are free of doubts, the target is 98 % (so on plain sweeps it advises)",
)
def test_qc_set_clean_source_masks_pass() -> None:
    clean = [c for defect, c, _ in _qc_set_verdicts() if defect is None]
    assert sum(clean) / len(clean) >= 0.98


def test_halo_share_sees_a_fringe_of_the_old_backdrop() -> None:
    h, w = 120, 160
    alpha = np.zeros((h, w), np.uint8)
    alpha[30:90, 50:110] = 255
    clean = np.full((h, w, 3), (20, 90, 30), np.uint8)  # new background: green
    clean[30:90, 50:110] = (200, 40, 40)  # product: red
    fringed = clean.copy()
    fringed[30:90, 50:110][:3] = 250  # the old white sweep left on the product's top edge ...
    fringed[30:90, 50:110][:, :3] = 250  # ... and its left edge
    lab = mask_quality.backdrop_palette(mask_quality.to_lab(np.full((h, w, 3), 250, np.uint8)), np.zeros((h, w), bool))
    assert mask_quality.halo_share(clean, alpha, *lab) == 0.0
    share = mask_quality.halo_share(fringed, alpha, *lab)
    assert share > mask_quality.MAX_HALO_SHARE  # two of four sides fringed
    assert not mask_quality.halo_verdicts(
        {"backdrop_palette": lab[0].tolist(), "backdrop_tolerance": lab[1]},
        Image.fromarray(fringed),
        Image.fromarray(np.dstack([fringed, alpha]), "RGBA"),
    )[0]["passed"]
    assert mask_quality.halo_verdicts({}, Image.fromarray(clean), Image.fromarray(alpha)) == []  # cut-out: no backdrop


def test_check_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        mask_quality.check(np.zeros((10, 10, 3), np.uint8), np.zeros((9, 10), np.uint8))
