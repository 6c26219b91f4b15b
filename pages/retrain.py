"""Retrain: choose the data, set the recipe, train in the background, follow the run, compare its model with the
active version, then publish and activate it as separate steps. The logic lives in ``train.datasource``, ``train.planning``, ``train.supervisor`` and ``train.compare``."""

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core import CLASS_NAMES, registry
from pages.common import escape_markdown as escape
from train import compare, datasource, planning, supervisor
from train.archive import ArchiveError
from train.architectures import ARCHITECTURES
from train.config import PAPER_CLASS_WEIGHTS, TrainConfig
from train.datasets import DatasetError
from train.run import device_description
from train.schedules import SCHEDULES

DEFAULTS = TrainConfig()
REFRESH_SECONDS = 2
CURVES = (("loss", "Loss"), ("accuracy", "Accuracy"), ("auc", "AUC"))
STATUS_LABELS = {"running": "⏳ running", "finished": "✅ finished", "failed": "❌ failed",
                 "cancelled": "⏹️ cancelled", "interrupted": "⚠️ interrupted (resumable)"}
CLASS_WEIGHT_MODES = ("paper", "balanced", "none", "custom")
ARCHITECTURE_HELP = "  \n".join(f"{name}: {spec['reference']}" for name, spec in sorted(ARCHITECTURES.items()))
SCHEDULE_HELP = ("paper: Zhong 2020's steps, 4e-4 for epochs 0–2, 2e-4 for 3–5, 1e-4 after (scaled to the peak). "
                 "warmup-cosine: linear warm-up from a tenth of the peak, then cosine decay. constant: the peak throughout.")
FIGURE_LAYOUT = {"height": 260, "margin": {"l": 10, "r": 10, "t": 40, "b": 10}}
LR_AXIS = {"rangemode": "tozero", "exponentformat": "e", "title": "learning rate"}
NUMBER_FORMAT = {name: st.column_config.NumberColumn(format="%.3f")
                 for name in ("active", "candidate", "difference", "ci95_low", "ci95_high")}



@st.cache_resource(show_spinner="Looking for the compute device…")
def device() -> dict:
    return device_description()


@st.cache_data(show_spinner="Reading the dataset…", max_entries=8, ttl=600)
def dataset_summary(folders: tuple) -> dict:
    return datasource.summarize_dataset(list(folders))


@st.cache_data(show_spinner="Checking every image…", max_entries=4)
def image_check(folders: tuple) -> dict:
    return datasource.check_images(dataset_summary(folders)["frame"])


@st.cache_data(show_spinner=False, max_entries=32)
def lr_curve(config: TrainConfig, training_images: int):
    return planning.planned_lr(config, training_images)


@st.cache_data(show_spinner="Comparing with the active version…", max_entries=8)
def comparison(run_dir: str, version: str) -> dict:
    return compare.compare_with_version(run_dir, version)


def duration_text(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 1 else f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


# --- runs -----------------------------------------------------------------------------------------------------


def render_curves(events) -> None:
    curves = supervisor.training_curves(events)
    if curves.empty:
        st.caption("Curves appear after the first training steps.")
        return
    columns = st.columns(len(CURVES) + 1)
    for column, (metric, title) in zip(columns, CURVES):
        figure = go.Figure(layout={**FIGURE_LAYOUT, "title": title, "xaxis_title": "epoch"})
        if metric in curves:
            figure.add_scatter(x=curves["epoch"], y=curves[metric], name="train", mode="lines")
        if f"val_{metric}" in curves:
            validation = curves.dropna(subset=[f"val_{metric}"])
            figure.add_scatter(x=validation["epoch"], y=validation[f"val_{metric}"], name="validation", mode="lines+markers")
        column.plotly_chart(figure, key=f"curve-{metric}")
    used = px.line(curves, x="epoch", y="lr", title="Learning rate used", markers=True)
    columns[-1].plotly_chart(used.update_layout(**FIGURE_LAYOUT).update_yaxes(**LR_AXIS), key="curve-lr")


@st.fragment(run_every=REFRESH_SECONDS)
def live_progress(run_dir) -> None:
    """Redrawn every few seconds on its own while the run trains; the whole page reruns once it ends."""
    info = supervisor.run_info(run_dir)
    if info.status != "running":
        st.rerun()
    state = supervisor.progress(info)
    if state["phase"] == "training":
        text = f"Training: epoch {state['epochs_done']:.1f} of {state['epochs']}"
    else:
        text = "Loading data…" if state["phase"] == "loading data" else "Evaluating and writing the model…"
    st.progress(state["fraction"], text=text)
    if state["phase"] != "loading data":
        eta, speed, lr = state["eta_s"], state["images_per_s"], state["lr"]
        columns = st.columns(4)
        columns[0].metric("Time left (training)", duration_text(eta) if eta is not None else "—")
        columns[1].metric("Images / s", f"{speed:.1f}" if speed else "—")
        columns[2].metric("Learning rate now", f"{lr:.2e}" if lr else "—")
        columns[3].metric("Device", state["device"]["kind"])
    render_curves(info.events)
    if st.button("Cancel run", key="cancel"):
        with st.spinner("Stopping the trainer…"):
            supervisor.cancel_run(run_dir)
        st.rerun()


def render_comparison(info) -> None:
    active = registry.active_version()
    if active is None:
        st.info("There is no active version to compare with.")
        return
    result = comparison(str(info.path), active)
    st.markdown(f"**Candidate versus the active version:** {escape(active)}")
    if not result["comparable"]:
        st.warning("Not comparable on the same split: differences below are only indicative.\n\n"
                   + "\n".join(f"- {escape(reason)}" for reason in result["reasons"]))
    cards = result["cards"]
    active_figures, candidate_figures = (
        compare.headline_metrics(cards[role].metrics)[["split", "metric", "figure"]].rename(columns={"figure": role})
        for role in ("active", "candidate")
    )
    side_by_side = active_figures.merge(candidate_figures, on=["split", "metric"], how="outer")
    st.caption("Each model on its own validation and test split, with 95 % intervals. Decide on validation; the "
               "test split is for the report.")
    st.dataframe(side_by_side.fillna("—"), hide_index=True)
    for split, table in result["splits"].items():
        if not table.empty:
            st.caption(f"{split.capitalize()}: both models on the same {int(table['n'].iloc[0])} images; difference "
                       "= candidate − active, with a 95 % paired bootstrap interval.")
            st.dataframe(table, hide_index=True, column_config=NUMBER_FORMAT)
    columns = st.columns(2)
    for column, (role, card) in zip(columns, (("Active", cards["active"]), ("Candidate", cards["candidate"]))):
        matrix = (card.metrics.get("test") or {}).get("confusion_matrix")
        if matrix is None:
            column.caption(f"{role}: no test confusion matrix recorded.")
            continue
        figure = px.imshow(matrix, x=list(card.class_names), y=list(card.class_names), text_auto=True, color_continuous_scale="Blues",
                           labels={"x": "predicted", "y": "true", "color": "images"}, title=f"{role} — test split")
        column.plotly_chart(figure.update_layout(**FIGURE_LAYOUT), key=f"matrix-{role}")


def render_publish(info) -> None:
    st.subheader("Publish and activate")
    published = [v for v in info.published if v in registry.list_versions()]
    if not published:
        name = st.text_input("New version name", value=f"{info.config.get('arch', 'model')}-{info.name[:15]}",
                             key="version_name", help="Letters, digits, '.', '_' or '-'; must not exist yet.")
        if st.button("Publish", key="publish", help="Copies the model into the versions folder; does not activate it."):
            try:
                with st.spinner("Publishing…"):
                    supervisor.publish_run(info.path, name)
            except registry.ModelVersionError as error:
                st.error(escape(error))
            else:
                st.rerun()
        return
    version = published[-1]
    st.text(f"Published as {version}.")
    if registry.active_version() == version:
        st.success("This version is active: Diagnose uses it. Roll back on the Models page.")
    elif st.button("Activate", key="activate", type="primary", help="Make this version the one Diagnose uses."):
        registry.set_active(version)
        st.rerun()


def render_run(info) -> None:
    st.markdown(f"**Status:** {STATUS_LABELS[info.status]}")
    with st.expander("Settings of this run"):
        st.json(info.config)
    if info.status == "running":
        live_progress(info.path)
        return
    if info.status == "failed":
        st.error("The run failed.")
        st.code(info.error or "(no message)", language=None)
        st.code(supervisor.log_tail(info.path) or "(empty log)", language=None)
    render_curves(info.events)
    if info.resumable:
        st.warning("The run stopped before it finished; resuming continues from its last saved epoch.")
        if st.button("Resume", key="resume"):
            try:
                supervisor.resume_run(info.path)
            except (supervisor.RunBusyError, ValueError) as error:
                st.error(escape(error))
            else:
                st.rerun()
        with st.expander("Log"):
            st.code(supervisor.log_tail(info.path) or "(empty log)", language=None)
    if info.status == "finished":
        render_comparison(info)
        render_publish(info)


def render_runs(runs) -> None:
    st.header("Runs")
    names = [info.name for info in runs]
    if "selected_run" in st.session_state:  # a run just started: show it
        st.session_state.run_choice = st.session_state.pop("selected_run")
    if st.session_state.get("run_choice") not in names:
        st.session_state.run_choice = names[0]
    chosen = st.selectbox("Run", names, key="run_choice")
    render_run(next(info for info in runs if info.name == chosen))


# --- a new run ------------------------------------------------------------------------------------------------


def choose_dataset():
    """The chosen dataset folders (a tuple, empty when none), after an optional zip upload."""
    st.subheader("1 · Data")
    with st.expander("Upload a zip (one folder per class, optional manifest.csv)"):
        upload = st.file_uploader("Dataset zip", type="zip")
        if upload is not None and st.button("Unpack", key="unpack"):
            try:
                with st.spinner("Unpacking…"):
                    unpacked = str(datasource.unpack_upload(upload, upload.name))
                    st.session_state.datasets = [*st.session_state.get("datasets", []), unpacked]
            except (ArchiveError, DatasetError) as error:
                st.error(escape(error))
    folders = [str(folder) for folder in datasource.dataset_folders()]
    if not folders:
        st.warning("No dataset folder (class folders or a manifest.csv) under the data folder:")
        st.code(str(datasource.data_root()), language=None)
        return ()
    if "datasets" not in st.session_state:
        st.session_state.datasets = folders[:1]
    chosen = st.multiselect("Dataset folders", folders, key="datasets",
                            help=f"Folders under the data root {datasource.data_root()} (set CXR_DATA_ROOT to change it). "
                            "Several are merged into one manifest; the patient-level split runs over the union.")
    return tuple(chosen)


def render_summary(folders: tuple):
    """The dataset's summary; returns it, or None when the folders cannot be used."""
    try:
        summary = dataset_summary(folders)
    except DatasetError as error:
        st.error("These folders cannot be used for training." if len(folders) > 1 else
                 "This folder cannot be used for training.")
        st.code(str(error), language=None)
        return None
    classes, sources = st.columns(2)
    classes.dataframe(summary["classes"])
    sources.dataframe(summary["sources"])
    for warning in summary["warnings"]:
        st.warning(escape(warning))
    if st.button("Check every image (unreadable files, near-duplicates)", key="check_images"):
        st.session_state[f"checked:{folders}"] = True
    if st.session_state.get(f"checked:{folders}"):
        check = image_check(folders)
        st.text(f"{len(check['unreadable'])} unreadable file(s); {check['near_duplicates']} near-duplicate(s) "
                f"(identical 16×16 thumbnails), {check['conflicting_labels']} of them with different labels.")
        if check["unreadable"]:
            st.dataframe(list(check["unreadable"].items()), hide_index=True)
        if check["near_duplicates"]:
            st.dataframe(check["duplicate_examples"], hide_index=True)
    return summary


def recipe(folders: tuple, sources: list) -> TrainConfig:
    """The hyperparameter controls (defaults: Zhong 2020), as a TrainConfig."""
    st.subheader("2 · Recipe")
    st.caption("The defaults reproduce Zhong 2020. On our data 'balanced' class weights and warmup-cosine did "
               "better on validation; choose on the validation split, never on test.")
    left, middle, right = st.columns(3)
    arch = left.selectbox("Architecture", sorted(ARCHITECTURES), index=sorted(ARCHITECTURES).index(DEFAULTS.arch),
                          key="arch", help=ARCHITECTURE_HELP)
    epochs = middle.number_input("Epochs", 1, 500, DEFAULTS.epochs, key="epochs", help="Paper: 12.")
    batch_size = right.number_input("Batch size", 1, 1024, DEFAULTS.batch_size, key="batch", help="Paper: 32.")
    lr = left.number_input("Peak learning rate", 1e-7, 1e-1, DEFAULTS.lr, step=1e-5, format="%.1e", key="lr",
                           help="Paper: 4e-4.")
    schedule = middle.selectbox("Learning-rate schedule", SCHEDULES, key="schedule", help=SCHEDULE_HELP)
    warmup = right.number_input("Warm-up epochs", 0.0, 100.0, DEFAULTS.warmup_epochs, step=0.5, key="warmup",
                                disabled=schedule != "warmup-cosine", help="For warmup-cosine only.")
    smoothing = left.number_input("Label smoothing", 0.0, 0.5, DEFAULTS.label_smoothing, step=0.01, key="smoothing",
                                  help="Paper: 0.12.")
    limit = middle.number_input("Images per class (quick run)", 0, 1_000_000, 0, key="limit",
                                help="0 uses every image; a small number gives a quick trial run.")
    seed = right.number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed, key="seed", help="Split, initialisation, augmentation.")
    mode = st.radio("Class weights", CLASS_WEIGHT_MODES, horizontal=True, key="weights",
                    help="paper: COVID-19 10, Normal 3, Pneumonia 1. balanced: inverse class frequency on the "
                    "training split. none: all 1.")
    class_weights = mode
    if mode == "custom":
        columns = st.columns(len(CLASS_NAMES))
        values = [column.number_input(name, 0.0, 1000.0, PAPER_CLASS_WEIGHTS[name], key=f"weight:{name}")
                  for column, name in zip(columns, CLASS_NAMES)]
        class_weights = ",".join(f"{name}={value:g}" for name, value in zip(CLASS_NAMES, values))
    st.markdown("**Augmentation** (training only; never a vertical flip)")
    left, middle, right = st.columns(3)
    flip = left.checkbox("Horizontal flip", DEFAULTS.flip, key="flip")
    brightness = middle.slider("Brightness ±", 0.0, 0.5, DEFAULTS.brightness, key="brightness")
    contrast = right.slider("Contrast ±", 0.0, 0.5, DEFAULTS.contrast, key="contrast")
    crop = st.slider("Random crop side (fraction of the cached image, 1.2 × the input size)", 0.5, 1.0,
                     (DEFAULTS.crop_scale_min, DEFAULTS.crop_scale_max), key="crop",
                     help="Paper: 80/96 (resize to 96, random 80-px crop).")
    with st.expander("Robustness across hospitals (shared preprocessing, sampling, stronger augmentation)"):
        left, middle, right = st.columns(3)
        intensity = left.selectbox("Intensity normalisation", ("none", "clahe", "equalize"), key="intensity",
                                   help="Applied in the one preprocessing path: training and every prediction.")
        border = middle.slider("Border crop (each side)", 0.0, 0.2, DEFAULTS.border_crop, key="border_crop")
        sampling = right.selectbox("Sampling", ("shuffle", "class-source"), key="sampling",
                                   help="class-source: batches balanced over classes, then over sources in a class.")
        rotation = left.slider("Rotation ± (degrees)", 0.0, 20.0, DEFAULTS.rotation, key="rotation")
        gamma = middle.slider("Gamma range", 0.0, 1.0, DEFAULTS.gamma, key="gamma")
        blur = right.slider("Blur σ up to (px)", 0.0, 2.0, DEFAULTS.blur, key="blur")
        noise = left.slider("Noise σ up to", 0.0, 0.1, DEFAULTS.noise, key="noise")
        jpeg = middle.slider("JPEG re-compression, quality from (0: off)", 0, 95, DEFAULTS.jpeg_quality, key="jpeg")
        mixup_alpha = right.slider("Mixup α (0: off)", 0.0, 1.0, DEFAULTS.mixup, key="mixup")
        leave_out = st.selectbox("Leave one source out (train without it; test on all of its images)",
                                 ["(none)", *sources], key="leave_out")
    with st.expander("Splits and checkpoint"):
        left, middle, right = st.columns(3)
        val_fraction = left.number_input("Validation fraction", 0.05, 0.4, DEFAULTS.val_fraction, key="val_fraction")
        test_fraction = middle.number_input("Test fraction", 0.05, 0.4, DEFAULTS.test_fraction, key="test_fraction")
        checkpoint = right.selectbox("Keep", ("best", "last"), key="checkpoint",
                                     help="best: the epoch with the lowest validation loss.")
    return TrainConfig(data=list(folders), leave_out_source="" if leave_out == "(none)" else leave_out,
                       intensity=intensity, border_crop=float(border), sampling=sampling, rotation=float(rotation),
                       gamma=float(gamma), blur=float(blur), noise=float(noise), jpeg_quality=int(jpeg),
                       mixup=float(mixup_alpha), arch=arch, epochs=int(epochs), batch_size=int(batch_size), lr=float(lr),
                       lr_schedule=schedule, warmup_epochs=float(warmup), label_smoothing=float(smoothing),
                       class_weights=class_weights, flip=flip, brightness=brightness, contrast=contrast,
                       crop_scale_min=crop[0], crop_scale_max=crop[1], val_fraction=val_fraction,
                       test_fraction=test_fraction, checkpoint=checkpoint, seed=int(seed), limit_per_class=int(limit))


def render_plan(config: TrainConfig, summary: dict, busy: bool) -> None:
    """The schedule it will run, the device, the estimated duration and the Start button."""
    st.subheader("3 · Start")
    training_images = planning.expected_training_images(summary["classes"], config)
    curve = lr_curve(config, training_images)
    figure = px.line(curve, x="epoch", y="lr", title=f"Learning rate it will use (~{training_images:,} training images)")
    st.plotly_chart(figure.update_layout(**FIGURE_LAYOUT).update_yaxes(**LR_AXIS), key="planned-lr")
    hardware = device()
    st.text(f"Device: {hardware['kind']} ({hardware['name']})")
    speed_key = f"speed:{config.arch}:{config.batch_size}"
    speed = planning.measured_speed(config.arch, config.batch_size) or st.session_state.get(speed_key)
    if speed is None and st.button("Estimate the duration (times a few training steps)", key="measure"):
        with st.spinner("Timing a few training steps…"):
            speed = st.session_state[speed_key] = planning.benchmark_speed(config.arch, config.batch_size)
    if speed:
        st.metric("Estimated training time", duration_text(config.epochs * training_images / speed),
                  help=f"{speed:.1f} images/s; plus data loading and evaluation (usually a minute or two).")
    if st.button("Start training", key="start", type="primary", disabled=busy,
                 help="Runs in the background: you may leave this page and come back."):
        try:
            st.session_state.selected_run = supervisor.start_run(config).name
        except (supervisor.RunBusyError, DatasetError) as error:
            st.error(escape(error))
        else:
            st.rerun()
    if busy:
        st.caption("A run is training; one run at a time.")


def render_new_run(busy: bool) -> None:
    folders = choose_dataset()
    if not folders:
        return
    summary = render_summary(folders)
    if summary is None:
        return
    render_plan(recipe(folders, [s for s in summary["sources"].index if s != "unknown"]), summary, busy)


st.title("Retrain")
st.caption("Train a new model version in the background, compare it with the active one, then publish and "
           "activate it. Research use only.")
runs = supervisor.list_runs()
busy = any(info.status == "running" for info in runs)
if runs:
    render_runs(runs)
st.header("New training run")
render_new_run(busy)
