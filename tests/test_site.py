"""A new hospital: the site name and status (``core.site``), the site's films (``train.site.films``), the site
figures with patient-level intervals, the adaptation methods folded into Keras models, and bad site sets."""

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core import CLASS_NAMES, site
from core.site import SiteError, checked_site_name, configured_site, site_notice, site_setting_error, site_status
from tests.conftest import CXR_POOL, DICOM_SAMPLE, SHARED_DATA, needs_shared_data, small_card
from train.site.figures import patient_bootstrap_aucs, site_figures
from train.site.films import check_classes, scan_site

NIH = SHARED_DATA / "cxr-nih-adult"
CLASS_FOLDERS = {"COVID-19": "COVID19", "Normal": "NORMAL", "Pneumonia": "PNEUMONIA"}


def make_site_set(folder, per_class: int, classes=CLASS_NAMES, seed: int = 0):
    """A labelled site set of real films from sources a pool model may not have seen: adult COVID-19
    (ieee8023) and NIH's adult normals and pneumonias, copied into ``folder`` in the pool's layout."""
    rng = np.random.default_rng(seed)
    sources = {
        "COVID-19": sorted((CXR_POOL / "COVID19").glob("ieee8023__*")),
        "Normal": sorted((NIH / "NORMAL").iterdir()),
        "Pneumonia": sorted((NIH / "PNEUMONIA").iterdir()),
    }
    for name in classes:
        target = folder / CLASS_FOLDERS[name]
        target.mkdir(parents=True, exist_ok=True)
        for index in rng.choice(len(sources[name]), per_class, replace=False):
            shutil.copy(sources[name][index], target / sources[name][index].name)
    return folder


def test_a_site_name_is_a_plain_name():
    assert checked_site_name(" St-Mary_2.north ") == "St-Mary_2.north"
    for bad in ("", "a/b", "../x", ".hidden", "x" * 65, "name with spaces", "<script>"):
        with pytest.raises(SiteError, match="not a plain site name"):
            checked_site_name(bad)


def test_cxr_site_is_read_when_asked_and_a_bad_one_is_reported_not_used(monkeypatch):
    assert configured_site() is None and site_setting_error() is None
    monkeypatch.setenv("CXR_SITE", "General")
    assert configured_site() == "General"
    monkeypatch.setenv("CXR_SITE", "../etc")
    assert configured_site() is None
    assert "CXR_SITE" in site_setting_error()


def entry(site_name, auc, n=90):
    from core.site import verdict

    code, text = verdict(auc, 0.96)
    return {
        "site": site_name,
        "n": n,
        "figures": {"macro_auc": {"value": auc}},
        "verdict": {"code": code, "text": text},
    }


def test_every_call_says_whether_the_version_was_validated_at_the_site():
    card = small_card()
    assert site_status(card, None) == {"name": None, "validated": False, "macro_auc": None, "n": None, "verdict": None}
    assert site_status(card, "General")["validated"] is False
    assert site_notice(site_status(card, "General")) == "Not validated at General: measured on other hospitals only."
    card.sites = [entry("General", 0.53)]
    status = site_status(card, "General")
    assert status == {"name": "General", "validated": False, "macro_auc": 0.53, "n": 90, "verdict": "unfit"}
    assert "do not use it here" in site_notice(status)
    card.sites.append(entry("General", 0.78, n=120))  # the newest measurement counts
    status = site_status(card, "General")
    assert status["validated"] and status["verdict"] == "reduced"
    assert site_notice(status) == "Validated at General on 120 films: macro AUC 0.78."
    assert site_status(card, "Other")["validated"] is False


def test_the_verdict_reads_plainly():
    assert site.verdict(0.53, 0.96) == (
        "unfit",
        "AUC 0.53 here against 0.96 where it was trained: do not use it here without adapting.",
    )
    assert site.verdict(0.95, 0.96)[0] == "fit"
    assert site.verdict(0.80, 0.96)[0] == "reduced"
    assert site.verdict(0.74, None) == ("fit", "AUC 0.74 here: usable here, by this site's own figures.")
    assert site.verdict(0.64, None)[0] == "unfit"
    assert site.verdict(None, 0.96)[0] == "unmeasured"


def test_site_figures_macro_auc_is_scikit_learns_and_intervals_resample_patients():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet(np.ones(3), 60) + np.eye(3)[labels] * 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    figures = site_figures(labels, probs, CLASS_NAMES, None, patients=np.repeat(np.arange(30), 2))
    assert figures["macro_auc"]["value"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    low, high = figures["macro_auc"]["ci95"]
    assert low < figures["macro_auc"]["value"] < high
    assert figures["patients"] == 30 and figures["n_per_class"] == {"COVID-19": 20, "Normal": 20, "Pneumonia": 20}
    assert np.array(figures["confusion_matrix"]).sum() == 60
    # Resampling patients, not films: with every patient's two films identical in class and score, the patient
    # bootstrap is the film bootstrap of half the data — wider than resampling the 60 films as independent.
    twins = np.repeat(np.arange(30), 2)
    _, by_patient = patient_bootstrap_aucs(labels, probs[np.repeat(np.arange(0, 60, 2), 2)], twins)
    _, by_film = patient_bootstrap_aucs(labels, probs[np.repeat(np.arange(0, 60, 2), 2)], np.arange(60))
    assert by_patient[1] - by_patient[0] > by_film[1] - by_film[0]


def test_a_class_absent_at_the_site_has_no_auc_and_the_macro_is_over_the_classes_present():
    labels = np.array([1] * 10 + [2] * 10)
    probs = np.tile([0.2, 0.5, 0.3], (20, 1))
    probs[10:, 2] += 0.3
    figures = site_figures(labels, probs, CLASS_NAMES, None)
    assert figures["per_class_auc"]["COVID-19"]["value"] is None
    assert figures["macro_auc"]["classes"] == ["Normal", "Pneumonia"]


@needs_shared_data
def test_patients_come_from_the_manifest_else_the_hashed_dicom_patient_id_else_one_per_file(tmp_path):
    import pydicom

    folder = tmp_path / "site"
    (folder / "NORMAL").mkdir(parents=True)
    for name, patient in (("a.dcm", "PAT-1"), ("b.dcm", "PAT-1"), ("c.dcm", "PAT-2")):
        dataset = pydicom.dcmread(DICOM_SAMPLE)
        dataset.PatientID = patient
        dataset.save_as(folder / "NORMAL" / name)
    shutil.copy(next((NIH / "NORMAL").iterdir()), folder / "NORMAL" / "d.jpg")
    frame = scan_site(folder).set_index(pd.Series(["a", "b", "c", "d"]))
    assert frame.loc["a", "patient_id"] == frame.loc["b", "patient_id"] != frame.loc["c", "patient_id"]
    assert frame.loc["a", "patient_id"].startswith("dicom:") and "PAT-1" not in frame.loc["a", "patient_id"]
    assert frame.loc["d", "patient_id"] == "file:d.jpg"
    pd.DataFrame({"path": ["NORMAL/a.dcm", "NORMAL/b.dcm"], "patient_id": ["p1", "p2"]}).to_csv(
        folder / "manifest.csv", index=False
    )
    assert sorted(scan_site(folder)["patient_id"]) == ["p1", "p2"]


def test_bad_site_sets_are_refused_with_what_is_wrong(tmp_path):
    with pytest.raises(SiteError, match="1 class\\(es\\) only"):
        check_classes({"COVID-19": 20, "Normal": 0, "Pneumonia": 0}, {}, tmp_path)
    with pytest.raises(SiteError, match="fewer than 5 films of Pneumonia \\(3\\)"):
        check_classes({"COVID-19": 20, "Normal": 9, "Pneumonia": 3}, {}, tmp_path)
    with pytest.raises(SiteError, match="fewer than 5 films of Normal \\(0\\)"):
        check_classes({"COVID-19": 20, "Normal": 0, "Pneumonia": 9}, {}, tmp_path, every_class=True)
    check_classes({"COVID-19": 0, "Normal": 9, "Pneumonia": 9}, {}, tmp_path)  # validation: two classes suffice
    (tmp_path / "OTHER").mkdir()
    (tmp_path / "OTHER" / "x.png").write_bytes(b"x")
    with pytest.raises(SiteError, match="Unknown class 'OTHER'"):
        scan_site(tmp_path)


@pytest.mark.slow
def test_a_head_and_a_recalibration_fold_into_keras_models_that_give_the_fitted_logits(tiny_version):
    from core.inference import Predictor, logits_model
    from train.site.methods import (
        FrozenFeatures,
        fit_head,
        fit_recalibration,
        head_logits,
        head_model,
        recalibrated_logits,
        recalibrated_model,
    )

    predictor = Predictor(tiny_version)
    rng = np.random.default_rng(0)
    inputs = rng.random((24, 80, 80, 3)).astype(np.float32)
    labels = np.arange(24) % 3
    extractor = FrozenFeatures(predictor.model, predictor.card.gradcam_layer)
    logits, features = extractor(inputs)
    assert set(features) == {"embedding", "pooled", "gap"}
    head = fit_head(features, labels, "embedding+pooled+gap", 0.05, 3)
    model = head_model(predictor.model, predictor.card.gradcam_layer, head)
    assert model.get_layer("logits").input.shape[-1] == sum(f.shape[1] for f in features.values())
    assert "block4_conv3" in [layer.name for layer in model.layers]  # Grad-CAM reaches the same conv layers
    np.testing.assert_allclose(logits_model(model)(inputs).numpy(), head_logits(head, features), atol=2e-3)
    temperature, offsets = fit_recalibration(logits, labels, 3)
    recalibrated = recalibrated_model(predictor.model, temperature, offsets)
    np.testing.assert_allclose(
        logits_model(recalibrated)(inputs).numpy(), recalibrated_logits(logits, temperature, offsets), atol=2e-3
    )


@pytest.mark.slow
def test_fine_tuning_with_replay_changes_a_copy_and_leaves_the_base_alone(tiny_version):
    from core.inference import Predictor
    from train.site.methods import fine_tune

    predictor = Predictor(tiny_version)
    before = [w.copy() for w in predictor.model.get_weights()]
    rng = np.random.default_rng(0)
    inputs, replay = rng.random((12, 80, 80, 3)).astype(np.float32), rng.random((30, 80, 80, 3)).astype(np.float32)
    tuned = fine_tune(predictor.model, inputs, np.arange(12) % 3, replay, np.arange(30) % 3, 3, lr=1e-3, epochs=1)
    assert any(not np.array_equal(a, b) for a, b in zip(tuned.get_weights(), before))
    assert all(np.array_equal(a, b) for a, b in zip(predictor.model.get_weights(), before))


@pytest.mark.slow
def test_an_ensemble_is_one_flat_model_whose_logits_are_the_mean_of_its_members(tiny_version):
    from core.inference import Predictor, logits_model
    from train.site.methods import FrozenFeatures, copy_model, ensemble_model, fit_head, head_logits

    predictor = Predictor(tiny_version)
    rng = np.random.default_rng(1)
    inputs = rng.random((12, 80, 80, 3)).astype(np.float32)
    _, features = FrozenFeatures(predictor.model, predictor.card.gradcam_layer)(inputs)
    head = fit_head(features, np.arange(12) % 3, "embedding+pooled", 0.05, 3)
    tuned = copy_model(predictor.model)
    tuned.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in tuned.get_weights()])
    model = ensemble_model(predictor.model, predictor.card.gradcam_layer, head, tuned)
    names = [layer.name for layer in model.layers]
    assert "block4_conv3" in names and "tuned_block4_conv3" in names  # flat: Grad-CAM reaches either trunk
    expected = (head_logits(head, features) + logits_model(tuned)(inputs).numpy()) / 2
    np.testing.assert_allclose(logits_model(model)(inputs).numpy(), expected, atol=2e-3)
