"""Diagnose latency as the reader sees it, and a session's memory.

For each full-resolution CXR in ../shared/data/fullres, the median over REPEATS runs of
  on screen   what the Diagnose page does between the file's bytes and the viewer + probabilities being sent
              to the browser: decode, display copy, thumbnail and model input (``worklist.decoded_study``), the
              one-pass reading (``worklist.look``: probabilities, the call made in the graph, its Grad-CAM),
              the film for the viewer (served by Streamlit's media storage), the viewer's data (the map's PNG,
              its grid, the window presets) as JSON, and the bars' figure with plotly's validation and JSON as
              ``st.plotly_chart`` does them;
  + flags     the flags the call is shown with (one more forward pass, over the mirror image), drawn next;
  floor       decode + one compiled forward/backward pass (``gradcam.explainer``; what no implementation avoids);
  common      the usual pattern: PIL decode, ``model.predict``, then a separate eager Grad-CAM pass and a
              display-size overlay JPEG;
  PNG         the full-resolution overlay PNG with its colour scale, made only for a download (apart).
The paths run in a rotating order, so none always follows another's image work (which evicts the model's
weights from the cache). ``--memory``: what a session holds for the 14 uploads, this page against the previous
one (full-resolution float32 pixels and a float32 display copy per file), by tracemalloc.

    .venv/bin/python bench/diagnose_latency.py [--repeats 8] [--memory]
"""

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import plotly.io  # noqa: E402
import plotly.tools  # noqa: E402
from PIL import Image  # noqa: E402

from core import CLASS_NAMES, gradcam, overlay, registry, viewer, worklist  # noqa: E402
from core.card import ModelCard  # noqa: E402
from core.imaging import read_image  # noqa: E402
from core.inference import LOGITS_LAYER, Predictor, softmax  # noqa: E402
from core.settings import SHARED_DATA  # noqa: E402

FULLRES = SHARED_DATA / "fullres"
RANDOM_ARCHITECTURE = "dcnn80-compact"
WARMUP = 3
FLOOR_BAR, COMMON_BAR = 1.3, 2.0
MEDIA = {}
COLUMNS = ("decode+copies", "reading", "figures", "on screen", "flags", "+ flags", "floor", "common", "PNG")


def load_predictor() -> Predictor:
    """The active version, else a random-weight model with a minimal card."""
    if registry.active_version():
        return Predictor()
    from train.trainer.architectures import ARCHITECTURES, build_model, conv_layer_names

    model = build_model(RANDOM_ARCHITECTURE)
    spec = ARCHITECTURES[RANDOM_ARCHITECTURE]
    card = ModelCard(
        version=f"random {RANDOM_ARCHITECTURE}",
        architecture=RANDOM_ARCHITECTURE,
        class_names=CLASS_NAMES,
        input_size=spec["input_size"],
        gradcam_layer=spec["gradcam_layer"],
        conv_layers=conv_layer_names(model),
    )
    return Predictor(model=model, card=card)


def sent(figure: dict) -> str:
    """The figure as the page hands it to ``st.plotly_chart`` (``viewer.checked``) and as that sends it."""
    figure = plotly.tools.return_figure_from_figure_or_data(viewer.checked(figure), validate_figure=True)
    return plotly.io.to_json(figure, validate=False)


def served(jpeg: bytes) -> str:
    """What the page's ``film_source`` costs: Streamlit's in-memory media storage (an MD5 of the bytes and a
    dictionary entry), returning the URL."""
    from streamlit.runtime.media_file_storage import MediaFileKind
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    storage = MEDIA.setdefault("storage", MemoryMediaFileStorage("/media"))
    return storage.get_url(storage.load_and_get_id(jpeg, "image/jpeg", MediaFileKind.MEDIA))


def on_screen(predictor, data: bytes) -> dict:
    """The page's path, stage by stage (ms), as in ``pages/diagnose.py`` for a new upload."""
    times, start = {}, time.perf_counter()
    study = worklist.decoded_study("film", data, hashlib.sha256(data).hexdigest(), predictor)
    times["decode+copies"], start = lap(start)
    look, _ = worklist.look(study, predictor, predictor.card)
    times["reading"], start = lap(start)
    film = viewer.film_jpeg(study.data, study.display)
    data = viewer.viewer_data(
        study.digest, served(film), study.display.shape, study.presets, study.value_range, look.maps[gradcam.GRADCAM]
    )
    json.dumps(data)  # as the viewer component sends it
    sent(viewer.probability_chart(predictor.class_names, look.probabilities, look.decision.label))
    times["figures"], start = lap(start)
    times["on screen"] = times["decode+copies"] + times["reading"] + times["figures"]
    worklist.assessment(study, predictor, predictor.card)
    times["flags"], _ = lap(start)
    times["+ flags"] = times["on screen"] + times["flags"]
    return times


def floor(predictor, data: bytes, image: np.ndarray) -> float:
    """Decode plus one compiled forward/backward pass (on an already prepared input) (ms)."""
    run = gradcam.explainer(predictor, predictor.card.gradcam_layer)
    targets = np.full(1, gradcam.TOP_CLASS, np.int32)
    start = time.perf_counter()
    read_image(data)
    decoded, start = lap(start)
    [tensor.numpy() for tensor in run(image[np.newaxis], targets)]
    return decoded + lap(start)[0]


def full_png(predictor, data: bytes) -> float:
    """The download: re-decode the upload, the full-resolution overlay PNG with its colour scale (ms)."""
    study = worklist.decoded_study("film", data, "png", predictor)
    worklist.look(study, predictor, predictor.card)
    start = time.perf_counter()
    worklist.full_resolution_png(study, predictor, predictor.card, gradcam.GRADCAM)
    return lap(start)[0]


def common_gradient_model(predictor):
    import keras

    model = predictor.model
    layer = model.get_layer(predictor.card.gradcam_layer)
    return keras.Model(model.inputs, [layer.output, model.get_layer(LOGITS_LAYER).output])


def common(predictor, gradient_model, data: bytes) -> float:
    """PIL decode, ``model.predict``, then the tutorial's eager Grad-CAM pass and a display overlay JPEG (ms)."""
    import tensorflow as tf

    start = time.perf_counter()
    grey = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
    batch = predictor.preprocess(grey)[np.newaxis]
    predictor.model.predict(batch, verbose=0)  # probabilities for the reader (before temperature)
    with tf.GradientTape() as tape:
        features, logits = gradient_model([batch])
        top = int(tf.argmax(logits[0]))
        score = logits[:, top]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(features[0] * weights, axis=-1)).numpy()
    softmax(logits.numpy(), predictor.temperature)
    display = cv2.resize(grey, (1024, round(grey.shape[0] * 1024 / grey.shape[1])), interpolation=cv2.INTER_AREA)
    overlay.rgb_jpeg(overlay.overlay(display, cam / max(cam.max(), gradcam.EPSILON), percentile=0))
    return lap(start)[0]


def lap(start: float):
    now = time.perf_counter()
    return (now - start) * 1000.0, now


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def measure(predictor, gradient_model, data: bytes, repeats: int) -> dict:
    """Median ms of every column for one file, after a warm-up, the paths in a rotating order."""
    image = predictor.preprocess(read_image(data).pixels)
    for _ in range(WARMUP):
        on_screen(predictor, data)
        common(predictor, gradient_model, data)
    runs = {column: [] for column in COLUMNS}

    def run_page():
        for stage, ms in on_screen(predictor, data).items():
            runs[stage].append(ms)

    paths = [
        run_page,
        lambda: runs["floor"].append(floor(predictor, data, image)),
        lambda: runs["common"].append(common(predictor, gradient_model, data)),
        lambda: runs["PNG"].append(full_png(predictor, data)),
    ]
    for repeat in range(repeats):
        for step in range(len(paths)):
            paths[(repeat + step) % len(paths)]()
    return {column: statistics.median(values) for column, values in runs.items()}


def session_memory(predictor, files) -> tuple:
    """(MB this page's studies hold, MB the previous page's per-file results held) for ``files``, by
    tracemalloc: the previous page kept each file's full-resolution float32 pixels, a float32 display copy
    (1024 px wide) and its JPEG; both keep the upload's bytes."""

    def held(make) -> float:
        tracemalloc.start()
        kept = [make(path.read_bytes()) for path in files]
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        return size / 1024**2

    def previous(data: bytes):
        pixels = read_image(data).pixels
        width = min(1024, pixels.shape[1])
        display = cv2.resize(
            pixels, (width, round(pixels.shape[0] * width / pixels.shape[1])), interpolation=cv2.INTER_AREA
        )
        return data, pixels, display, overlay.encode_jpeg(overlay.to_uint8(display))

    def current(data: bytes):
        study = worklist.decoded_study("film", data, "memory", predictor)
        worklist.look(study, predictor, predictor.card)
        worklist.assessment(study, predictor, predictor.card)
        return study

    current(files[0].read_bytes())  # compile outside the measurement
    return held(current), held(previous)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--memory", action="store_true", help="only measure a session's memory for the files")
    args = parser.parse_args(argv)
    files = sorted(p for p in FULLRES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    predictor = load_predictor()
    if args.memory:
        now, before = session_memory(predictor, files)
        print(
            f"{len(files)} full-resolution uploads held by one session: {now:.1f} MB now, {before:.1f} MB with "
            f"the previous page's per-file results ({before / now:.1f}×)"
        )
        return 0
    gradient_model = common_gradient_model(predictor)
    print(
        f"model {predictor.version}, Grad-CAM at {predictor.card.gradcam_layer}; {len(files)} images, "
        f"median of {args.repeats} runs each after {WARMUP} warm-ups; {os.cpu_count()} CPU cores; ms"
    )
    print(f"{'image':<24}{'size':>11}" + "".join(f"{column:>14}" for column in COLUMNS) + f"{'screen/floor':>14}")
    rows = []
    for path in files:
        data = path.read_bytes()
        height, width = read_image(data).pixels.shape
        row = measure(predictor, gradient_model, data, args.repeats)
        rows.append(row)
        print(
            f"{path.name[:23]:<24}{f'{width}x{height}':>11}"
            + "".join(f"{row[c]:>14.1f}" for c in COLUMNS)
            + f"{row['on screen'] / row['floor']:>14.2f}"
        )
    summary = {column: statistics.median(row[column] for row in rows) for column in COLUMNS}
    print(f"{'median over images':<35}" + "".join(f"{summary[c]:>14.1f}" for c in COLUMNS))
    to_floor = summary["on screen"] / summary["floor"]
    print(f"on screen / floor      = {to_floor:.2f}  (bar ≤ {FLOOR_BAR}: {verdict(to_floor <= FLOOR_BAR)})")
    print(f"+ flags / floor        = {summary['+ flags'] / summary['floor']:.2f}  (the call's flags drawn next)")
    speedup = summary["common"] / summary["on screen"]
    print(f"common / on screen     = {speedup:.2f}  (bar ≥ {COMMON_BAR}: {verdict(speedup >= COMMON_BAR)})")
    print(f"full-resolution PNG    = {summary['PNG']:.1f} ms (download only, apart)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
