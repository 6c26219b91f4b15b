"""Shared fixtures: real data locations, isolated weights/cache/run folders, a small published model version."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.served_app import CHROMIUM, served_app  # noqa: E402
from core import registry  # noqa: E402
from core.settings import REPO_ROOT as REPO  # noqa: E402
from core.settings import SHARED_DATA  # noqa: E402

CXR_POOL = SHARED_DATA / "cxr"
FULLRES = SHARED_DATA / "fullres"
DICOM_SAMPLE = SHARED_DATA / "dicom" / "rsna_cr_jpeg_baseline.dcm"

needs_shared_data = pytest.mark.skipif(not CXR_POOL.is_dir(), reason="../shared/data is not present")
NO_POINT_NOTE = {"reader": "test fixture", "reason": "start without a saved point"}
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (run `make browser`)")


@pytest.fixture(autouse=True)
def isolated_folders(tmp_path_factory, monkeypatch):
    """Every test gets its own weights, runs, uploads and exports folders; the decode cache is shared by all."""
    base = tmp_path_factory.mktemp("cxr")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(base / "weights"))
    monkeypatch.setenv("CXR_RUNS_DIR", str(base / "runs"))
    monkeypatch.setenv("CXR_UPLOAD_DIR", str(base / "uploads"))
    monkeypatch.setenv("CXR_EXPORT_DIR", str(base / "exports"))
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CXR_SITE_DATA_DIR", str(base / "sites"))
    monkeypatch.delenv("CXR_SITE", raising=False)
    return base


def small_card(**fields):
    """A minimal valid ``ModelCard`` (the three classes, the compact DCNN's input size and layer) with ``fields``
    set: for tests of code that reads a card."""
    from core import CLASS_NAMES
    from core.card import ModelCard

    return ModelCard(
        **{
            "architecture": "dcnn80-compact",
            "input_size": 80,
            "class_names": CLASS_NAMES,
            "gradcam_layer": "block4_conv3",
            **fields,
        }
    )


def publish_random_version(
    root: Path, name: str = "tiny", arch: str = "dcnn80-compact", activate=True, seed=0, temperature=1.0
):
    """Publish an untrained (random, seeded) model with a minimal valid card and predictions: for tests that
    need a loadable version, not a good one."""
    import keras

    from core import CLASS_NAMES
    from core.card import ModelCard, write_predictions
    from core.preprocess import PREPROCESSING
    from train.trainer.architectures import ARCHITECTURES, build_model, conv_layer_names

    keras.utils.set_random_seed(seed)
    model = build_model(arch)
    staging = registry.new_staging_dir(root)
    model.save(staging / registry.MODEL_FILE)
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(60)],
            "label": [CLASS_NAMES[i % 3] for i in range(60)],
            "source": ["a" if i % 2 else "b" for i in range(60)],
        }
    )
    for filename in (registry.VAL_PREDICTIONS, registry.TEST_PREDICTIONS):
        write_predictions(staging / filename, rows, rng.dirichlet(np.ones(3), size=60), CLASS_NAMES)
    ModelCard(
        version=name,
        created="2026-01-01T00:00:00+00:00",
        architecture=arch,
        input_size=ARCHITECTURES[arch]["input_size"],
        class_names=CLASS_NAMES,
        preprocessing=PREPROCESSING,
        gradcam_layer=ARCHITECTURES[arch]["gradcam_layer"],
        conv_layers=conv_layer_names(model),
        temperature=temperature,
        caveat="Test model with random weights.",
    ).save(staging / registry.CARD_FILE)
    registry.publish(staging, name, activate=activate, root=root)
    return name


@pytest.fixture
def tiny_version(isolated_folders):
    """An active, loadable (untrained) model version in the test's weights folder."""
    return publish_random_version(isolated_folders / "weights")


@pytest.fixture
def shipped_version(isolated_folders):
    """A copy of the repository's active (shipped) version in the test's weights folder, active there, so a
    test may change it (e.g. save an operating point) without touching ``weights/``."""
    import shutil

    name = registry.active_version(REPO / "weights")
    if name is None:
        pytest.skip("no shipped model version in weights/ yet")
    target = isolated_folders / "weights"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "weights" / name, target / name)
    registry.set_active(name, target)
    return name


@pytest.fixture
def app_url(isolated_folders, tmp_path):
    """The app served on a free localhost port (``bench.served_app``), on the shipped version when one is active,
    else on a random-weight one; its URL."""
    weights = REPO / "weights"
    if registry.active_version(weights) is None:
        weights = isolated_folders / "weights"
        publish_random_version(weights)
    with served_app(tmp_path / "streamlit.log", {"CXR_WEIGHTS_DIR": str(weights)}) as (url, _):
        yield url


@pytest.fixture(params=["tiny_version", "shipped_version"])
def version(request):
    """Every version-based test runs on the tiny random version and on (a copy of) the shipped one, each
    starting without a saved operating point (the shipped card carries one)."""
    from core import operating_point

    name = request.getfixturevalue(request.param)
    operating_point.clear_operating_point(name, **NO_POINT_NOTE)
    return name
