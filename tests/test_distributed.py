"""Training on several machines: with ``TF_CONFIG`` naming two workers, the trainer's own ``train.trainer.run.fit``
trains under ``MultiWorkerMirroredStrategy``. Two real worker processes on localhost (free ports) train the
real compact DCNN a few steps on real pool radiographs, in lockstep: both report two replicas, and end with
the same weights, which differ from the initial ones. ``TF_CONFIG`` itself is checked before TensorFlow starts."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import CXR_POOL, REPO, needs_shared_data
from train.trainer.distribute import ClusterConfigError, cluster_workers

WORKERS = 2
IMAGES_PER_CLASS = {"train": 8, "val": 2, "test": 1}
WORKER_TIMEOUT_S = 240
CLASS_FOLDERS = ("COVID19", "NORMAL", "PNEUMONIA")


def free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def tf_config(ports: list, index: int) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"localhost:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
    )


def small_real_data():
    """A ``train.trainer.run.PreparedData`` of a few real pool radiographs per class: train at the cache size (96 px),
    validation and test at the input size (80 px), as ``train.trainer.run.prepare_data`` makes them."""
    from core.imaging import read_grey
    from core.preprocess import prepare_grey
    from train.trainer.run import PreparedData

    rows, images, labels = [], {split: [] for split in IMAGES_PER_CLASS}, {split: [] for split in IMAGES_PER_CLASS}
    for label, folder in enumerate(CLASS_FOLDERS):
        paths = iter(sorted((CXR_POOL / folder).glob("*.jpg")))
        for split, count in IMAGES_PER_CLASS.items():
            for _ in range(count):
                path = next(paths)
                size = 96 if split == "train" else 80
                images[split].append(np.round(prepare_grey(read_grey(path), size) * 255).astype(np.uint8))
                labels[split].append(label)
                rows.append({"path": str(path), "label": folder, "source": "pool", "split": split})
    return PreparedData(
        frame=pd.DataFrame(rows),
        images={s: np.stack(v) for s, v in images.items()},
        labels={s: np.array(v) for s, v in labels.items()},
        train_inputs=np.zeros((0,)),
        manifest_sha256="",
        skipped={},
        folders=[],
    )


def worker(run_dir: str, result_file: str) -> None:
    """One worker: the trainer's ``fit`` for one epoch (3 steps of a global batch of 8) in float32; writes
    the replica count it trained with and per-tensor sums of its final and initial weights."""
    from pathlib import Path

    import keras

    from train.trainer.architectures import build_model
    from train.trainer.config import TrainConfig
    from train.trainer.progress import read_events
    from train.trainer.run import fit

    config = TrainConfig(
        data=["pool"],
        arch="dcnn80-compact",
        epochs=1,
        batch_size=8,
        precision="float32",
        class_weights="none",
        lr_schedule="constant",
        checkpoint="last",
    )
    model, _, device, _ = fit(config, small_real_data(), Path(run_dir), verbose=False)
    start = next(event for event in read_events(Path(run_dir)) if event["event"] == "start")
    keras.utils.set_random_seed(config.seed)  # as fit does before it builds the model: the initial weights
    initial = build_model(config.arch, 3)
    Path(result_file).write_text(
        json.dumps(
            {
                "replicas": device["replicas"],
                "start": start["device"],
                "weights": weight_sums(model),
                "initial": weight_sums(initial),
            }
        )
    )


def weight_sums(model) -> list:
    return [float(np.sum(np.abs(w), dtype=np.float64)) for w in model.get_weights()]


@pytest.mark.slow
@needs_shared_data
def test_two_workers_train_the_real_model_in_lockstep(tmp_path):
    ports = free_ports(WORKERS)
    processes, results = [], []
    for index in range(WORKERS):
        run_dir, result = tmp_path / f"worker-{index}", tmp_path / f"result-{index}.json"
        run_dir.mkdir()
        results.append(result)
        code = f"from tests.test_distributed import worker; worker({str(run_dir)!r}, {str(result)!r})"
        environment = dict(
            os.environ, TF_CONFIG=tf_config(ports, index), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=REPO,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [process.communicate(timeout=WORKER_TIMEOUT_S)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0] * WORKERS, outputs[0][-3000:] + outputs[1][-3000:]
    reports = [json.loads(result.read_text()) for result in results]
    assert [report["replicas"] for report in reports] == [WORKERS] * WORKERS
    assert all(report["start"]["replicas"] == WORKERS for report in reports)  # recorded in the run's events
    np.testing.assert_allclose(reports[0]["weights"], reports[1]["weights"], rtol=1e-6)  # one model, two machines
    np.testing.assert_allclose(reports[0]["initial"], reports[1]["initial"], rtol=1e-6)
    assert not np.allclose(reports[0]["weights"], reports[0]["initial"], rtol=1e-6)  # and it trained


@pytest.mark.parametrize(
    "value, workers",
    [
        ("", 0),
        (tf_config([1, 2], 1), 2),
        (
            json.dumps(
                {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "chief", "index": 0}}
            ),
            3,
        ),
    ],
)
def test_tf_config_names_the_cluster(value, workers):
    assert cluster_workers({"TF_CONFIG": value}) == workers


@pytest.mark.parametrize(
    "value, message",
    [
        ("{not json", "must be JSON"),
        (json.dumps({"cluster": {"worker": ["a:1"]}}), "must be JSON"),
        (json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}), "non-empty list"),
        (json.dumps({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}), "non-empty list"),
        (tf_config([1, 2], 2), "index"),
        (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}), "chief or worker"),
    ],
)
def test_a_malformed_tf_config_is_a_clear_error(value, message):
    with pytest.raises(ClusterConfigError, match=message):
        cluster_workers({"TF_CONFIG": value})
