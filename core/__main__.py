"""Command line: ``python -m core predict [--model VERSION] [--json] [--cam-dir DIR] FILE_OR_FOLDER...`` and
``python -m core info``."""

import argparse
import json
import os
import sys
from pathlib import Path

from core import registry


def expand_inputs(items) -> list:
    """Files as given; folders expanded to the files inside them (recursively, sorted, hidden files skipped)."""
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(
                p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            paths.append(path)
    return paths


def command_predict(args) -> int:
    from core.flags import UNCERTAIN_CALL
    from core.inference import Predictor
    from core.operating_point import decide

    predictor = Predictor(args.model)
    inputs = expand_inputs(args.files)
    cam_names = cam_file_names(inputs, args.files) if args.cam_dir else {}
    all_read = True
    for result in predictor.assess_files(inputs, batch_size=args.batch_size, keep_pixels=bool(args.cam_dir)):
        if result.error is not None:
            all_read = False
            if args.json:
                print(json.dumps({"file": str(result.path), "error": result.error}), flush=True)
            else:
                print(f"{result.path}\tERROR\t{result.error}", flush=True)
            continue
        prediction = decide(result.probabilities, predictor.card).label
        assessment = result.assessment
        if args.cam_dir:
            write_cam(predictor, result, Path(args.cam_dir) / cam_names[result.path])
        if args.json:
            probabilities = {name: round(float(p), 6) for name, p in zip(predictor.class_names, result.probabilities)}
            print(json.dumps({"file": str(result.path), "probabilities": probabilities, "prediction": prediction,
                              "trust": "uncertain" if assessment.out_of_depth else "ok",
                              "flags": assessment.flags, "warnings": assessment.warnings}), flush=True)
        else:
            shown = "  ".join(f"{name} {p:.3f}" for name, p in zip(predictor.class_names, result.probabilities))
            call = f"{UNCERTAIN_CALL} (model: {prediction})" if assessment.out_of_depth else prediction
            flags = f"\tflags: {','.join(assessment.flags)}" if assessment.flags else ""
            print(f"{result.path}\t{call}\t{shown}{flags}", flush=True)
    return 0 if all_read else 1


def cam_file_names(paths, given) -> dict:
    """``<relative path without suffix>_gradcam.png`` for each input: relative to the folder it was found in
    (files given directly: their name), so files of the same name in different folders never overwrite each
    other; a clash left over (the same name given twice) gets a numbered suffix."""
    folders = [Path(item) for item in given if Path(item).is_dir()]
    names, used = {}, set()
    for path in paths:
        base = next((path.relative_to(f) for f in folders if path.is_relative_to(f)), Path(path.name))
        name = base.with_name(f"{base.stem}_gradcam.png")
        counter = 1
        while name in used:
            counter += 1
            name = base.with_name(f"{base.stem}_{counter}_gradcam.png")
        used.add(name)
        names[path] = name
    return names


def write_cam(predictor, result, target: Path) -> None:
    """The Grad-CAM overlay of the class called at the operating point, at full resolution, as a PNG."""
    from core import gradcam

    explanation, _ = gradcam.explain_call(predictor, predictor.preprocess(result.pixels))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gradcam.overlay_png(result.pixels, explanation.maps[gradcam.GRADCAM]))


def command_info(args) -> int:
    card = registry.load_card(args.model)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    print(f"version       {card['version']}  ({'active' if card['version'] == registry.active_version() else 'inactive'})")
    print(f"architecture  {card['architecture']}  input {card['input_size']}×{card['input_size']}×3")
    print(f"classes       {', '.join(card['class_names'])}")
    print(f"temperature   {card.get('temperature', 1.0):.3f}")
    print(f"grad-cam      {card.get('gradcam_layer')}")
    for split in ("validation", "test", "external"):
        metrics = (card.get("metrics") or {}).get(split)
        if metrics:
            auc = metrics.get("macro_auc") or {}
            low, high = (auc.get("ci95") or [None, None])[:2]
            auc_text = f"{auc['value']:.3f} [{low:.3f}, {high:.3f}]" if auc.get("value") is not None and low is not None else "—"
            accuracy = (metrics.get("accuracy") or {}).get("value")
            print(f"{split:<13} accuracy {accuracy if accuracy is None else f'{accuracy:.3f}'}  macro AUC {auc_text}  "
                  f"n={metrics.get('n')}")
    flags = card.get("flags") or {}
    if flags.get("rates", {}).get("test"):
        print(f"flags         {100 * flags['rates']['test']['any']:.1f} % of test images flagged "
              f"({100 * flags['rates']['test']['out_of_depth']:.1f} % 'read without the model')")
    for row in card.get("cross_hospital") or []:
        shift = row["shift"]
        called = shift["non_covid_called_covid"]
        print(f"held out      {row['held_out_source']}: non-COVID called COVID-19 {100 * (called['value'] or 0):.1f} % "
              f"({called['k']}/{called['n']}), macro AUC {shift.get('macro_auc_present') or float('nan'):.3f}")
    if card.get("caveat"):
        print(f"caveat        {card['caveat']}")
    return 0


def command_report(args) -> int:
    from core.report import markdown_report

    if args.card:
        card, folder = json.loads(Path(args.card).read_text()), Path(args.card).parent
    else:
        card = registry.load_card(args.model)
        folder = registry.version_dir(card["version"])
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
    predict.add_argument("--cam-dir", help="also write each readable file's Grad-CAM overlay (of the called class) "
                         "to CAM_DIR/<path relative to the folder given>_gradcam.png")
    info = commands.add_parser("info", help="show a model version's card")
    info.add_argument("--model", help="model version (default: the active one)")
    info.add_argument("--json", action="store_true")
    report = commands.add_parser("report", help="a version's validation/test figures as Markdown tables")
    report.add_argument("--model", help="model version (default: the active one)")
    report.add_argument("--card", help="a card.json file instead, e.g. runs/<run>/candidate/card.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return {"predict": command_predict, "info": command_info, "report": command_report}[args.command](args)
    except registry.ModelVersionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
