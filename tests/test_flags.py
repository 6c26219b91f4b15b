"""core.flags and the detectors of ``train.trainer.flags``: flags on every call, measured on real radiographs with the
shipped version's own detector."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from core.flags import FLAGS, Assessment, FlagDetector, from_hints, is_borderline, mahalanobis
from core.imaging import read_image
from core.operating_point import threshold_interval
from tests.conftest import CXR_POOL, FULLRES, REPO, SHARED_DATA, needs_shared_data

SAMPLE = 40  # real test-split radiographs per check


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 5))
    covariance = np.cov(rng.normal(size=(200, 5)), rowvar=False)
    precision = np.linalg.inv(covariance)
    points = rng.normal(size=(7, 5))
    expected = [min(scipy_mahalanobis(p, m, precision) ** 2 for m in means) for p in points]
    np.testing.assert_allclose(mahalanobis(points, means, precision), expected, rtol=1e-9)


def test_assessment_keeps_order_drops_repeats_and_knows_out_of_depth():
    assessment = Assessment()
    assessment.add("borderline")
    assert not assessment.out_of_depth
    assessment.add("rotated")
    assessment.add("rotated")
    assert assessment.flags == ["borderline", "rotated"] and len(assessment.warnings) == 2
    assert assessment.out_of_depth
    assert all(isinstance(text, str) and isinstance(depth, bool) for text, depth in FLAGS.values())


def test_image_hints_carry_their_flag_codes():
    small = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 100), dtype=np.uint8)).save(small, "PNG")
    assessment = from_hints(read_image(small.getvalue()).hints)
    assert "thumbnail" in assessment.flags and not assessment.out_of_depth


def test_borderline_is_the_threshold_interval():
    names = ["COVID-19", "Normal", "Pneumonia"]
    point = {"positive_class": "COVID-19", "threshold": 0.3, "threshold_interval": [0.25, 0.36]}
    assert is_borderline([0.3, 0.6, 0.1], names, point) and is_borderline([0.25, 0.7, 0.05], names, point)
    assert not is_borderline([0.2, 0.7, 0.1], names, point) and not is_borderline([0.4, 0.5, 0.1], names, point)
    assert not is_borderline([0.3, 0.6, 0.1], names, None)


def test_threshold_interval_brackets_the_threshold_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)

    def sample(n):
        truth = rng.random(n) < 0.3
        return truth, np.clip(np.where(truth, rng.normal(0.7, 0.15, n), rng.normal(0.3, 0.15, n)), 0, 1)

    widths = []
    for n in (300, 3000):
        truth, scores = sample(n)
        threshold = float(np.quantile(scores[truth], 0.025))
        low, high = threshold_interval(truth, scores, threshold, resamples=300)
        assert low <= threshold <= high
        widths.append(high - low)
    assert widths[1] < widths[0]


def test_a_detector_survives_saving(tmp_path):
    rng = np.random.default_rng(2)
    detector = FlagDetector(
        rng.normal(size=(3, 4)), np.eye(4), np.zeros(6), np.ones(6), rng.normal(size=7), rng.normal(size=7), settings={}
    )
    detector.save(tmp_path)
    settings = {name: {"threshold": 0.5} for name in ("out_of_distribution", "rotated", "inverted", "uncertain")}
    loaded = FlagDetector.load(tmp_path, settings)
    np.testing.assert_allclose(loaded.class_means, detector.class_means, rtol=1e-6)
    assert FlagDetector.load(tmp_path, {}) is None  # thresholds missing: no detector
    assert FlagDetector.load(tmp_path / "elsewhere", settings) is None


# --- the shipped version on real radiographs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from core import registry
    from core.inference import Predictor

    root = REPO / "weights"
    predictor = Predictor(root=root)
    if predictor.detector is None:
        pytest.skip("the shipped version has no flag detector")
    return predictor, registry.version_dir(predictor.version, root)


def shipped_files(folder, split: str, count: int):
    """Real radiographs from the shipped version's own split (never used to fit its detector for 'test')."""
    frame = pd.read_csv(folder / f"{split}_predictions.csv")
    rows = frame.sample(min(count, len(frame)), random_state=0) if count else frame
    return [
        SHARED_DATA / path if (SHARED_DATA / path.split("/")[0]).is_dir() and "/" in path else CXR_POOL / path
        for path in rows["path"]
    ]


def assessed(predictor, greys):
    batch = np.stack([predictor.preprocess(grey) for grey in greys])
    return predictor.assess(batch)[1]


@needs_shared_data
@pytest.mark.parametrize("turns", [1, 3])
def test_real_radiographs_turned_sideways_are_flagged(shipped, turns):
    predictor, folder = shipped
    greys = [np.rot90(read_image(path).pixels, turns) for path in shipped_files(folder, "test", SAMPLE)]
    flagged = [a.out_of_depth for a in assessed(predictor, greys)]
    assert np.mean(flagged) >= 0.9


@needs_shared_data
def test_real_radiographs_with_inverted_greys_are_flagged(shipped):
    predictor, folder = shipped
    greys = [1.0 - read_image(path).pixels for path in shipped_files(folder, "test", SAMPLE)]
    assessments = assessed(predictor, greys)
    assert np.mean(["inverted" in a.flags for a in assessments]) >= 0.9


@needs_shared_data
def test_full_resolution_originals_are_in_distribution(shipped):
    predictor, _ = shipped
    results = list(
        predictor.assess_files(sorted(p for p in FULLRES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")))
    )
    assert len(results) == 14
    flagged = [result.path.name for result in results if result.assessment.flags]
    assert len(flagged) <= 2, flagged


@pytest.mark.slow
@needs_shared_data
def test_validation_flag_rates_match_their_thresholds(shipped):
    """Through the app's own path (files → decode → preprocess → detector), the validation images are flagged
    out-of-distribution at about the rate the threshold was set for (1 %), and uncertain at about 3 %."""
    predictor, folder = shipped
    results = list(predictor.assess_files(shipped_files(folder, "val", 0)))
    assert all(result.error is None for result in results)

    def rate(code):
        return np.mean([code in result.assessment.flags for result in results])

    settings = predictor.card.flags
    assert rate("out_of_distribution") == pytest.approx(1 - settings["out_of_distribution"]["quantile"], abs=0.01)
    assert rate("uncertain") == pytest.approx(1 - settings["uncertain"]["quantile"], abs=0.015)
    assert rate("rotated") <= 0.02 and rate("inverted") <= 0.02
