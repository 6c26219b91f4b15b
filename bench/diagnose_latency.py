"""Diagnose latency: file bytes → calibrated probabilities + full-resolution Grad-CAM overlay PNG.

For each full-resolution CXR in ../shared/data/fullres: the median over REPEATS runs of each stage (decode,
preprocess, forward+CAM in one pass, overlay PNG) and of the whole chain, next to
  floor   decode + one compiled forward/backward pass (what no implementation can avoid), and
  common  the usual pattern: PIL decode, ``model.predict``, then a separate eager Grad-CAM pass.
Also shown: the page's on-screen path (display-size overlay JPEG instead of the full-size PNG).
Runs on the active model version, or on a random-weight dcnn80-compact when none is active.

    .venv/bin/python bench/diagnose_latency.py [--repeats 8]
"""

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from core import CLASS_NAMES, gradcam, registry  # noqa: E402
from core.imaging import read_image  # noqa: E402
from core.inference import LOGITS_LAYER, Predictor, softmax  # noqa: E402

FULLRES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fullres"
RANDOM_ARCHITECTURE = "dcnn80-compact"
WARMUP = 3
FLOOR_BAR, COMMON_BAR = 1.3, 2.0
STAGES = ("decode", "preprocess", "forward+CAM", "overlay PNG")
COLUMNS = (*STAGES, "end-to-end", "floor", "common", "page")


def load_predictor() -> Predictor:
    """The active version, else a random-weight model with a minimal card."""
    if registry.active_version():
        return Predictor()
    from train.architectures import ARCHITECTURES, build_model, conv_layer_names

    model = build_model(RANDOM_ARCHITECTURE)
    spec = ARCHITECTURES[RANDOM_ARCHITECTURE]
    card = {"version": f"random {RANDOM_ARCHITECTURE}", "class_names": list(CLASS_NAMES), "temperature": 1.0,
            "input_size": spec["input_size"], "gradcam_layer": spec["gradcam_layer"],
            "conv_layers": conv_layer_names(model)}
    return Predictor(model=model, card=card)


def ours(predictor, data: bytes) -> dict:
    """Our path, stage by stage (ms)."""
    times, start = {}, time.perf_counter()
    radiograph = read_image(data)
    times["decode"], start = lap(start)
    image = predictor.preprocess(radiograph.pixels)
    times["preprocess"], start = lap(start)
    explanation, _ = gradcam.explain_call(predictor, image)
    times["forward+CAM"], start = lap(start)
    gradcam.overlay_png(radiograph.pixels, explanation.maps[gradcam.GRADCAM])
    times["overlay PNG"], _ = lap(start)
    times["end-to-end"] = sum(times[stage] for stage in STAGES)
    return times


def floor(predictor, data: bytes, image: np.ndarray) -> float:
    """Decode plus one compiled forward/backward pass (on an already prepared input) (ms)."""
    run = gradcam.explainer(predictor.model, predictor.card["gradcam_layer"])
    targets = np.full(1, gradcam.TOP_CLASS, np.int32)
    start = time.perf_counter()
    read_image(data)
    decoded, start = lap(start)
    [tensor.numpy() for tensor in run(image[np.newaxis], targets)]
    return decoded + lap(start)[0]


def page(predictor, data: bytes) -> float:
    """What the Diagnose page does before showing a card: decode, one pass, a display-size overlay JPEG (ms)."""
    start = time.perf_counter()
    radiograph = read_image(data)
    explanation, _ = gradcam.explain_call(predictor, predictor.preprocess(radiograph.pixels))
    display = gradcam.display_copy(radiograph.pixels)
    gradcam.grey_jpeg(display)
    gradcam.overlay_jpeg(display, explanation.maps[gradcam.GRADCAM])
    return lap(start)[0]


def common_gradient_model(predictor):
    import keras

    model = predictor.model
    layer = model.get_layer(predictor.card["gradcam_layer"])
    return keras.Model(model.inputs, [layer.output, model.get_layer(LOGITS_LAYER).output])


def common(predictor, gradient_model, data: bytes) -> float:
    """PIL decode, ``model.predict``, then the tutorial's eager Grad-CAM pass and the same overlay PNG (ms)."""
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
    gradcam.overlay_png(grey, cam / max(cam.max(), gradcam.EPSILON))
    return lap(start)[0]


def lap(start: float):
    now = time.perf_counter()
    return (now - start) * 1000.0, now


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def measure(predictor, gradient_model, data: bytes, repeats: int) -> dict:
    """Median ms of every column for one file, after a warm-up. The four paths run in a rotating order, so each
    follows every other equally often: a path run just after another's image work finds the model's weights out
    of the cache, and a fixed order would charge that to the same path every time."""
    image = predictor.preprocess(read_image(data).pixels)
    for _ in range(WARMUP):
        ours(predictor, data)
        common(predictor, gradient_model, data)
    runs = {column: [] for column in COLUMNS}

    def run_ours():
        for stage, ms in ours(predictor, data).items():
            runs[stage].append(ms)

    paths = [run_ours, lambda: runs["floor"].append(floor(predictor, data, image)),
             lambda: runs["common"].append(common(predictor, gradient_model, data)),
             lambda: runs["page"].append(page(predictor, data))]
    for repeat in range(repeats):
        for step in range(len(paths)):
            paths[(repeat + step) % len(paths)]()
    return {column: statistics.median(values) for column, values in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    files = sorted(p for p in FULLRES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    predictor = load_predictor()
    gradient_model = common_gradient_model(predictor)
    print(f"model {predictor.version}, Grad-CAM at {predictor.card['gradcam_layer']}; {len(files)} images, "
          f"median of {args.repeats} runs each after {WARMUP} warm-ups; {os.cpu_count()} CPU cores; ms")
    print(f"{'image':<24}{'size':>11}" + "".join(f"{column:>13}" for column in COLUMNS) + f"{'e2e/floor':>11}"
          f"{'common/e2e':>12}")
    rows = []
    for path in files:
        data = path.read_bytes()
        height, width = read_image(data).pixels.shape
        row = measure(predictor, gradient_model, data, args.repeats)
        rows.append(row)
        print(f"{path.name[:23]:<24}{f'{width}x{height}':>11}" + "".join(f"{row[c]:>13.1f}" for c in COLUMNS)
              + f"{row['end-to-end'] / row['floor']:>11.2f}{row['common'] / row['end-to-end']:>12.2f}")
    summary = {column: statistics.median(row[column] for row in rows) for column in COLUMNS}
    print(f"{'median over images':<35}" + "".join(f"{summary[c]:>13.1f}" for c in COLUMNS))
    to_floor = summary["end-to-end"] / summary["floor"]
    speedup = summary["common"] / summary["end-to-end"]
    print(f"end-to-end / floor  = {to_floor:.2f}  (bar ≤ {FLOOR_BAR}: {verdict(to_floor <= FLOOR_BAR)})")
    print(f"common / end-to-end = {speedup:.2f}  (bar ≥ {COMMON_BAR}: {verdict(speedup >= COMMON_BAR)})")
    print(f"page / floor        = {summary['page'] / summary['floor']:.2f}  (display-size JPEG overlay, as shown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
