"""Retrain: choose the data, start from a named recipe (the active version's own, or the paper's) and adjust it,
train in the background, follow the run, compare its model with the active version, then publish and activate it
as separate steps. The logic lives in ``train.jobs.datasource``, ``train.jobs.planning``, ``train.jobs.recipes``,
``train.jobs.supervisor`` and ``train.evaluation.compare``; the text of every figure in ``core.report``."""

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core import CLASS_NAMES, registry, settings
from core.card import CardError, ModelCard
from core.report import (
    DASH,
    difference_rows,
    duration_text,
    headline_comparison,
    number_text,
    relative_path,
    settings_rows,
)
from pages.common import ACTIVATION_PENDING, CHART_HEIGHT, CHART_MARGIN, confusion_figure, run_through_app, text_table
from pages.common import escape_markdown as escape
from train.evaluation import compare
from train.jobs import datasource, planning, recipes, supervisor
from train.jobs.archive import ArchiveError
from train.trainer.architectures import ARCHITECTURES
from train.trainer.checkpoints import read_state
from train.trainer.config import CHECKPOINTS, INTENSITIES, SAMPLINGS, TrainConfig
from train.trainer.datasets import DatasetError
from train.trainer.run import CANDIDATE, device_description
from train.trainer.schedules import SCHEDULES

REFRESH_SECONDS = 2
CURVES = (("loss", "Loss"), ("accuracy", "Accuracy"), ("auc", "AUC"))
STATUS_LABELS = {
    "running": ":material/progress_activity: running",
    "finished": ":material/check_circle: finished",
    "failed": ":material/error: failed",
    "cancelled": ":material/cancel: cancelled",
    "interrupted": ":material/warning: interrupted",
}
ARCHITECTURE_HELP = "  \n".join(f"{name}: {spec['reference']}" for name, spec in sorted(ARCHITECTURES.items()))
SCHEDULE_HELP = (
    "paper: Zhong 2020's steps, 4e-4 for epochs 0–2, 2e-4 for 3–5, 1e-4 after (scaled to the peak). "
    "warmup-cosine: linear warm-up from a tenth of the peak, then cosine decay. constant: the peak throughout."
)
FIGURE_LAYOUT = {"height": CHART_HEIGHT, "margin": CHART_MARGIN, "legend": {"orientation": "h", "y": -0.3}}
LR_AXIS = {"rangemode": "tozero", "exponentformat": "e", "title": "learning rate"}
PRESET_KEY = "recipe_preset"


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


# --- runs -----------------------------------------------------------------------------------------------------


SHORT_CURVE = 20  # points; fewer are drawn as markers too
FEW_TRAINING_IMAGES = 300  # below: publishing asks for a second thought


def lr_figure(curve, title: str) -> go.Figure:
    figure = go.Figure(layout={**FIGURE_LAYOUT, "title": title, "xaxis_title": "epoch", "showlegend": False})
    short = len(curve) < SHORT_CURVE  # a run of a step or two: points, or nothing would show
    figure.add_scatter(
        x=curve["epoch"], y=curve["lr"], mode="lines+markers" if short else "lines", name="learning rate"
    )
    return figure.update_yaxes(**LR_AXIS)


def render_curves(events) -> None:
    curves = supervisor.training_curves(events)
    if curves.empty:
        st.caption("Curves appear after the first training steps.")
        return
    cells = [cell for _ in range(2) for cell in st.columns(2)]  # a 2 × 2 grid: each chart gets half the width
    for cell, (metric, title) in zip(cells, CURVES):
        figure = go.Figure(
            layout={**FIGURE_LAYOUT, "title": title, "xaxis_title": "epoch", "yaxis_title": title.lower()}
        )
        if metric in curves:
            figure.add_scatter(x=curves["epoch"], y=curves[metric], name="train", mode="lines")
        if f"val_{metric}" in curves:
            validation = curves.dropna(subset=[f"val_{metric}"])
            figure.add_scatter(
                x=validation["epoch"], y=validation[f"val_{metric}"], name="validation", mode="lines+markers"
            )
        cell.plotly_chart(figure, key=f"curve-{metric}")
    cells[-1].plotly_chart(lr_figure(curves, "Learning rate used"), key="curve-lr")


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
        columns[0].metric("Time left (training)", duration_text(eta))
        columns[1].metric("Images / s", number_text(speed, 1) if speed else DASH)
        columns[2].metric("Learning rate now", f"{lr:.2e}" if lr else DASH)
        columns[3].metric("Device", state["device"]["kind"])
    render_curves(info.events)
    if st.button("Cancel run", key="cancel", icon=":material/stop_circle:"):
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
        st.warning(
            "Not comparable on the same split: differences below are only indicative.\n\n"
            + "\n".join(f"- {escape(reason)}" for reason in result["reasons"])
        )
    cards = result["cards"]
    st.caption(
        "Each model on its own validation and test split, with 95 % intervals. Decide on validation; the "
        "test split is for the report."
    )
    st.dataframe(headline_comparison(cards["active"], cards["candidate"]), hide_index=True)
    for split, table in result["splits"].items():
        if not table.empty:
            st.caption(
                f"{split.capitalize()}: both models on the same {int(table['n'].iloc[0])} images; difference "
                "= candidate − active, with a 95 % paired bootstrap interval."
            )
            st.dataframe(difference_rows(table), hide_index=True)
    columns = st.columns(2)
    for column, (role, card) in zip(columns, (("Active", cards["active"]), ("Candidate", cards["candidate"]))):
        matrix = (card.metrics.get("test") or {}).get("confusion_matrix")
        if matrix is None:
            column.caption(f"{role}: no test confusion matrix recorded.")
            continue
        column.plotly_chart(
            confusion_figure(matrix, card.class_names, f"{role} — test split", "predicted"), key=f"matrix-{role}"
        )


def training_images_of(run_dir) -> int | None:
    """How many images the run's candidate was trained on (its card's split sizes), or None when unknown."""
    try:
        card = ModelCard.load(Path(run_dir) / CANDIDATE / registry.CARD_FILE)
    except CardError:
        return None
    return (card.data.get("split_sizes") or {}).get("train")


def render_publish(info) -> None:
    st.subheader("Publish and activate")
    published = [v for v in info.published if v in registry.list_versions()]
    if not published:
        name = st.text_input(
            "New version name",
            value=f"{info.config.get('arch', 'model')}-{info.name[:15]}",
            key="version_name",
            help="Letters, digits, '.', '_' or '-'; must not exist yet.",
        )
        trained_on = training_images_of(info.path)
        few = trained_on is not None and trained_on < FEW_TRAINING_IMAGES
        if few:
            st.warning(
                f"This model was trained on {trained_on:,} images: its figures have wide intervals and it is "
                "unlikely to serve readers. Publish it only to try the workflow.",
                icon=":material/warning:",
            )
        anyway = few and st.checkbox(f"Publish it anyway ({trained_on:,} training images)", key="publish_few")
        if st.button(
            "Publish",
            key="publish",
            icon=":material/publish:",
            disabled=few and not anyway,
            help="Copies the model into the versions folder; does not activate it.",
        ):
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
    elif st.button(
        "Review and activate…",
        key="activate",
        type="primary",
        icon=":material/published_with_changes:",
        help="On the Models page: what changes for every reader, then your name and a reason.",
    ):
        st.session_state["version_choice"] = version
        st.session_state[ACTIVATION_PENDING] = version
        st.switch_page("pages/models.py")


def render_run(info) -> None:
    st.markdown(f"**Status:** {STATUS_LABELS[info.status]}")
    with st.expander("Settings of this run"):
        text_table(settings_rows(info.config), columns=["Setting", "Value"])
    if info.status == "running":
        live_progress(info.path)
        return
    if info.status == "failed":
        st.error("The run failed.")
        st.code(info.error or "(no message)", language=None)
        st.code(supervisor.log_tail(info.path) or "(empty log)", language=None)
    render_curves(info.events)
    if info.resumable:
        saved, epochs = read_state(info.path)["epoch"], info.config.get("epochs", "?")
        if saved:
            st.warning(
                f"The run stopped after epoch {saved} of {epochs}, which is saved: resuming continues from "
                f"epoch {saved + 1}.",
                icon=":material/pause_circle:",
            )
        else:
            st.warning(
                "The run stopped before its first epoch ended: no epoch was saved, so nothing can be resumed. "
                "Running it again starts from the beginning with the same settings.",
                icon=":material/info:",
            )
        if st.button(
            f"Resume from epoch {saved + 1}" if saved else "Run again from the start",
            key="resume",
            icon=":material/play_arrow:",
        ):
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


def default_preset():
    """The named recipes (the active version's first) and the one the form starts from."""
    try:
        card = registry.load_card()
    except registry.ModelVersionError:
        card = None
    named = recipes.presets(card)
    return named, next(iter(named))


def apply_preset(named: dict) -> None:
    """Fill the form with the chosen recipe (every setting, not only those that differ)."""
    st.session_state.update(recipes.form_values(named[st.session_state[PRESET_KEY]]))


def choose_dataset(preset):
    """The chosen dataset folders (a tuple, empty when none), after an optional zip upload; by default those the
    starting recipe was trained on, where they are under the data root."""
    st.subheader("1 · Data")
    with st.expander("Upload a zip (one folder per class, optional manifest.csv)"):
        upload = st.file_uploader("Dataset zip", type="zip")
        if upload is not None and st.button("Unpack", key="unpack", icon=":material/unarchive:"):
            try:
                with st.spinner("Unpacking…"):
                    unpacked = str(datasource.unpack_upload(upload, upload.name))
                    st.session_state.datasets = [*st.session_state.get("datasets", []), unpacked]
            except (ArchiveError, DatasetError) as error:
                st.error(escape(error))
    root = settings.data_root()
    folders = [str(folder) for folder in datasource.dataset_folders()]
    if not folders:
        st.warning(
            f"No dataset folder (class folders or a manifest.csv) under the data folder "
            f"({escape(root.name)}; set CXR_DATA_ROOT to change it)."
        )
        return ()
    if "datasets" not in st.session_state:
        st.session_state.datasets = recipes.trained_on(preset, folders) or folders[:1]
    chosen = st.multiselect(
        "Dataset folders",
        folders,
        key="datasets",
        format_func=lambda f: relative_path(f, root),
        help="Folders under the data root (set CXR_DATA_ROOT to change it). Several are merged "
        "into one manifest; the patient-level split runs over the union.",
    )
    return tuple(chosen)


def render_summary(folders: tuple):
    """The dataset's summary; returns it, or None when the folders cannot be used."""
    try:
        summary = dataset_summary(folders)
    except DatasetError as error:
        st.error(
            "These folders cannot be used for training."
            if len(folders) > 1
            else "This folder cannot be used for training."
        )
        st.code(str(error), language=None)
        return None
    classes, sources = st.columns(2)
    classes.dataframe(summary["classes"])
    sources.dataframe(summary["sources"])
    for warning in summary["warnings"]:
        st.warning(escape(warning))
    if st.button("Check every image (unreadable files, near-duplicates)", key="check_images", icon=":material/search:"):
        st.session_state[f"checked:{folders}"] = True
    if st.session_state.get(f"checked:{folders}"):
        check = image_check(folders)
        st.text(
            f"{len(check['unreadable'])} unreadable file(s); {check['near_duplicates']} near-duplicate(s) "
            f"(identical 16×16 thumbnails), {check['conflicting_labels']} of them with different labels."
        )
        if check["unreadable"]:
            st.dataframe(
                [(relative_path(path), problem) for path, problem in check["unreadable"].items()], hide_index=True
            )
        if check["near_duplicates"]:
            st.dataframe(check["duplicate_examples"], hide_index=True)
    return summary


def recipe(named: dict, folders: tuple, sources: list) -> TrainConfig:
    """The recipe: a named starting point, then every setting adjustable; returns it as a TrainConfig."""
    st.subheader("2 · Recipe")
    st.selectbox(
        "Start from",
        list(named),
        key=PRESET_KEY,
        on_change=apply_preset,
        args=(named,),
        help="The active version's recipe is what the shipped default was trained with; the paper's is "
        "Zhong 2020 (the 63-million-parameter dcnn80 head, paper schedule and class weights: about half "
        "the speed here). Choosing one sets every field below.",
    )
    st.caption("Choose on the validation split, never on test.")
    left, middle, right = st.columns(3)
    left.selectbox("Architecture", sorted(ARCHITECTURES), key="arch", help=ARCHITECTURE_HELP)
    middle.number_input("Epochs", 1, 500, key="epochs", help="Paper: 12.")
    right.number_input("Batch size", 1, 1024, key="batch_size", help="Paper: 32.")
    left.number_input("Peak learning rate", 1e-7, 1e-1, step=1e-5, format="%.1e", key="lr", help="Paper: 4e-4.")
    schedule = middle.selectbox("Learning-rate schedule", SCHEDULES, key="lr_schedule", help=SCHEDULE_HELP)
    right.number_input(
        "Warm-up epochs",
        0.0,
        100.0,
        step=0.5,
        key="warmup_epochs",
        disabled=schedule != "warmup-cosine",
        help="For warmup-cosine only.",
    )
    left.number_input("Label smoothing", 0.0, 0.5, step=0.01, key="label_smoothing", help="Paper: 0.12.")
    middle.number_input(
        "Images per class (quick run)",
        0,
        1_000_000,
        key="limit_per_class",
        help="0 uses every image; a small number gives a quick trial run.",
    )
    right.number_input("Seed", 0, 2**31 - 1, key="seed", help="Split, initialisation, augmentation.")
    mode = st.radio(
        "Class weights",
        recipes.CLASS_WEIGHT_MODES,
        horizontal=True,
        key="class_weights",
        help="paper: COVID-19 10, Normal 3, Pneumonia 1. balanced: inverse class frequency on the "
        "training split. none: all 1.",
    )
    if mode == "custom":
        for column, name in zip(st.columns(len(CLASS_NAMES)), CLASS_NAMES):
            column.number_input(name, 0.0, 1000.0, key=recipes.weight_key(name))
    st.markdown("**Augmentation** (training only; never a vertical flip)")
    left, middle, right = st.columns(3)
    left.checkbox("Horizontal flip", key="flip")
    middle.slider("Brightness ±", 0.0, 0.5, key="brightness")
    right.slider("Contrast ±", 0.0, 0.5, key="contrast")
    st.slider(
        "Random crop side (fraction of the cached image, 1.2 × the input size)",
        0.5,
        1.0,
        key="crop",
        help="Paper: 80/96 (resize to 96, random 80-px crop).",
    )
    with st.expander("Robustness across hospitals (shared preprocessing, sampling, stronger augmentation)"):
        left, middle, right = st.columns(3)
        left.selectbox(
            "Intensity normalisation",
            INTENSITIES,
            key="intensity",
            help="Applied in the one preprocessing path: training and every prediction.",
        )
        middle.slider("Border crop (each side)", 0.0, 0.2, key="border_crop")
        right.selectbox(
            "Sampling",
            SAMPLINGS,
            key="sampling",
            help="class-source: batches balanced over classes, then over sources in a class.",
        )
        left.slider("Rotation ± (degrees)", 0.0, 20.0, key="rotation")
        middle.slider("Gamma range", 0.0, 1.0, key="gamma")
        right.slider("Blur σ up to (px)", 0.0, 2.0, key="blur")
        left.slider("Noise σ up to", 0.0, 0.1, key="noise")
        middle.slider("JPEG re-compression, quality from (0: off)", 0, 95, key="jpeg_quality")
        right.slider("Mixup α (0: off)", 0.0, 1.0, key="mixup")
        choices = [recipes.NO_SOURCE, *sources]
        if st.session_state.get(recipes.LEAVE_OUT) not in choices:
            st.session_state[recipes.LEAVE_OUT] = recipes.NO_SOURCE
        st.selectbox(
            "Leave one source out (train without it; test on all of its images)", choices, key=recipes.LEAVE_OUT
        )
    with st.expander("Splits and checkpoint"):
        left, middle, right = st.columns(3)
        left.number_input("Validation fraction", 0.05, 0.4, key="val_fraction")
        middle.number_input("Test fraction", 0.05, 0.4, key="test_fraction")
        right.selectbox("Keep", CHECKPOINTS, key="checkpoint", help="best: the epoch with the lowest validation loss.")
    return recipes.config_from_form(named[st.session_state[PRESET_KEY]], st.session_state, folders)


def render_plan(config, summary: dict, runs: list) -> None:
    """The schedule it will run, the device, the estimated duration (from ``runs``' speeds) and the Start button."""
    busy = any(info.status == "running" for info in runs)
    st.subheader("3 · Start")
    training_images = planning.expected_training_images(summary["classes"], config)
    curve = lr_curve(config, training_images)
    st.plotly_chart(
        lr_figure(curve, f"Learning rate it will use (~{training_images:,} training images)"), key="planned-lr"
    )
    hardware = device()
    st.text(f"Device: {hardware['kind']} ({hardware['name']})")
    speed_key = f"speed:{config.arch}:{config.batch_size}"
    speed = planning.measured_speed(config.arch, config.batch_size, runs) or st.session_state.get(speed_key)
    if speed is None and st.button(
        "Estimate the duration (times a few training steps)", key="measure", icon=":material/timer:"
    ):
        with st.spinner("Timing a few training steps…"):
            speed = st.session_state[speed_key] = planning.benchmark_speed(config.arch, config.batch_size)
    if speed:
        st.metric(
            "Estimated training time",
            duration_text(planning.training_seconds(config, training_images, speed)),
            help=f"{speed:.1f} images/s; plus data loading and evaluation (usually a minute or two).",
        )
    if st.button(
        "Start training",
        key="start",
        type="primary",
        disabled=busy,
        icon=":material/play_arrow:",
        help="Runs in the background: you may leave this page and come back.",
    ):
        try:
            st.session_state.selected_run = supervisor.start_run(config).name
        except (supervisor.RunBusyError, DatasetError) as error:
            st.error(escape(error))
        else:
            st.rerun()
    if busy:
        st.caption("A run is training; one run at a time.")


def render_new_run(runs: list) -> None:
    named, default = default_preset()
    if st.session_state.get(PRESET_KEY) not in named:
        st.session_state[PRESET_KEY] = default
    for key, value in recipes.form_values(named[st.session_state[PRESET_KEY]]).items():
        st.session_state.setdefault(key, value)  # kept across reruns; filled again after leaving the page
    folders = choose_dataset(named[st.session_state[PRESET_KEY]])
    if not folders:
        return
    summary = render_summary(folders)
    if summary is None:
        return
    render_plan(recipe(named, folders, [s for s in summary["sources"].index if s != "unknown"]), summary, runs)


run_through_app(__file__)
st.title("Retrain")
st.caption(
    "Train a new model version in the background, compare it with the active one, then publish and "
    "activate it. Research use only."
)
runs = supervisor.list_runs()
if runs:
    render_runs(runs)
st.header("New training run")
render_new_run(runs)
