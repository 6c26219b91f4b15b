"""Command line: ``python -m core predict [--model VERSION] [--json] [--cam-dir DIR] [--report-dir DIR]
FILE_OR_FOLDER...``, ``python -m core info`` and ``python -m core report``."""

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core import atomic, registry, settings


def expand_inputs(items) -> list:
    """Files as given; folders expanded to the files inside them (recursively, sorted, hidden files skipped)."""
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            paths.append(path)
    return paths


@contextmanager
def quiet_stderr():
    """Keep TensorFlow's and absl's start-up lines (written by C++ straight to file descriptor 2) off the
    terminal: the descriptor goes to a temporary file for the block, whose text is replayed only when the block
    fails, so a real error is never hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def command_predict(args) -> int:
    from core.site import site_setting_error

    if site_setting_error():
        print(f"error: {site_setting_error()}", file=sys.stderr)
        return 2
    with quiet_stderr():
        from core import worklist
        from core.flags import UNCERTAIN_CALL
        from core.inference import Predictor
        from core.operating_point import decide

        predictor = Predictor(args.model)
        predictor.logits(np.zeros((1, predictor.input_size, predictor.input_size, 3), np.float32))  # first-run logs
    inputs = expand_inputs(args.files)
    cam_names = output_names(inputs, args.files, "_gradcam.png") if args.cam_dir else {}
    report_names = output_names(inputs, args.files, "_report.pdf") if args.report_dir else {}
    all_read = True
    keep_pixels = bool(args.cam_dir or args.report_dir)
    results = predictor.assess_files(inputs, batch_size=args.batch_size, keep_pixels=keep_pixels)
    for result in progress_bar(results, len(inputs), "films"):
        if result.error is not None:
            all_read = False
            if args.json:
                print(json.dumps({"file": str(result.path), "error": result.error}), flush=True)
            else:
                print(f"{result.path}\tERROR\t{result.error}", flush=True)
            continue
        prediction = decide(result.probabilities, predictor.class_names, predictor.card.operating_point).label
        assessment = result.assessment
        entry = worklist.record(
            str(result.path),
            result.probabilities,
            predictor.class_names,
            prediction,
            assessment,
            predictor.card,
            worklist.now(),
        )
        if keep_pixels:
            write_outputs(predictor, result, entry, args, cam_names, report_names)
        if args.json:
            print(json.dumps(entry), flush=True)
        else:
            shown = "  ".join(f"{name} {p:.3f}" for name, p in zip(predictor.class_names, result.probabilities))
            call = f"{UNCERTAIN_CALL} (model: {prediction})" if assessment.out_of_depth else prediction
            flags = f"\tflags: {','.join(assessment.flags)}" if assessment.flags else ""
            print(f"{result.path}\t{call}\t{shown}{flags}", flush=True)
    return 0 if all_read else 1


def progress_bar(items, total: int, unit: str):
    """``items`` with a progress bar on stderr when it is a terminal and there is more than one (tqdm)."""
    if total < 2 or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit=f" {unit}", file=sys.stderr, leave=False)


def output_names(paths, given, suffix: str) -> dict:
    """``<relative path without suffix><suffix>`` for each input: relative to the folder it was found in
    (files given directly: their name), so files of the same name in different folders never overwrite each
    other; a clash left over (the same name given twice) gets a numbered suffix."""
    folders = [Path(item) for item in given if Path(item).is_dir()]
    names, used = {}, set()
    for path in paths:
        base = next((path.relative_to(f) for f in folders if path.is_relative_to(f)), Path(path.name))
        name = base.with_name(f"{base.stem}{suffix}")
        counter = 1
        while name in used:
            counter += 1
            name = base.with_name(f"{base.stem}_{counter}{suffix}")
        used.add(name)
        names[path] = name
    return names


def write_outputs(predictor, result, entry: dict, args, cam_names: dict, report_names: dict) -> None:
    """The Grad-CAM overlay PNG (full resolution, with its colour scale) and/or the PDF report of one file,
    explaining the class called at the operating point."""
    from core import diagnosis, overlay
    from core.gradcam import GRADCAM
    from core.study_report import StudyReport, study_pdf

    (look,) = diagnosis.look_batch(predictor, predictor.preprocess(result.pixels)[np.newaxis])
    cam = look.maps[GRADCAM]
    if args.cam_dir:
        atomic.write_bytes(
            made_parent(Path(args.cam_dir) / cam_names[result.path]), overlay.overlay_png(result.pixels, cam)
        )
    if args.report_dir:
        sentence = diagnosis.call_sentence(
            look.decision, result.probabilities, result.assessment, predictor.class_names, predictor.card
        )
        report = StudyReport(
            overlay.display_copy(result.pixels),
            cam,
            GRADCAM,
            look.decision.label,
            look.layer,
            sentence,
            entry,
            predictor.card.caveat,
        )
        atomic.write_bytes(made_parent(Path(args.report_dir) / report_names[result.path]), study_pdf(report))


def made_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def command_info(args) -> int:
    from core.report import info_text

    card = registry.load_card(args.model)
    if args.json:
        print(json.dumps(card.to_dict(), indent=2))
        return 0
    print(info_text(card, registry.active_version()))
    return 0


def command_report(args) -> int:
    from core.card import CardError, ModelCard
    from core.tables import markdown_report

    if args.card:
        try:
            card, folder = ModelCard.load(args.card), Path(args.card).parent
        except CardError as error:
            print(f"error: {args.card} is not a model card: {error}", file=sys.stderr)
            return 2
    else:
        card = registry.load_card(args.model)
        folder = registry.version_dir(card.version)
    print(markdown_report(card, folder))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description="CXR Triage inference tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify chest X-rays (files or folders)")
    predict.add_argument("files", nargs="+", help="image files (PNG, JPEG, DICOM, ...) or folders of them")
    predict.add_argument("--model", help="model version (default: the active one)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument(
        "--cam-dir",
        help="also write each readable file's Grad-CAM overlay (of the called class) "
        "to CAM_DIR/<path relative to the folder given>_gradcam.png",
    )
    predict.add_argument(
        "--report-dir",
        help="also write each readable file's one-page PDF report to "
        "REPORT_DIR/<path relative to the folder given>_report.pdf",
    )
    info = commands.add_parser("info", help="show a model version's card")
    info.add_argument("--model", help="model version (default: the active one)")
    info.add_argument("--json", action="store_true")
    report = commands.add_parser("report", help="a version's validation/test figures as Markdown tables")
    report.add_argument("--model", help="model version (default: the active one)")
    report.add_argument("--card", help="a card.json file instead, e.g. runs/<run>/candidate/card.json")
    args = parser.parse_args(argv)
    settings.quiet_tensorflow()
    try:
        return {"predict": command_predict, "info": command_info, "report": command_report}[args.command](args)
    except registry.ModelVersionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
