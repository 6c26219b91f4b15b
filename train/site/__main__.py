"""``python -m train.site validate --data DIR [--model VERSION] [--site NAME] [--json]``
``python -m train.site adapt --data DIR --site NAME --publish NAME [--model VERSION] [--activate] [--json]``

DIR is a site's labelled films in the pool's layout (class folders, PNG/JPEG/DICOM, optional manifest.csv).
Exit status: 0 done, 2 a site set, name or version that cannot be used (nothing changed), 130 cancelled.
"""

from core import settings

settings.quiet_tensorflow()

import argparse  # noqa: E402  (TensorFlow's logging level must be set before anything imports it)
import getpass  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from core import atomic, registry  # noqa: E402
from core.site import SiteError  # noqa: E402
from train.jobs import supervisor  # noqa: E402
from train.site.adapt import DEFAULT_TARGET, METHODS, adapt  # noqa: E402
from train.site.report import adaptation_text, terminal_progress, validation_text  # noqa: E402
from train.site.validate import validate  # noqa: E402
from train.trainer.progress import CANCEL_REQUESTED, write_event  # noqa: E402

RESULT_FILE = "result.json"  # a site run's summary, for the Site page


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.site", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("validate", "measure a version on a site's labelled films"),
        ("adapt", "make a site version from a base version and the site's films"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--data", required=True, metavar="DIR", help="the site's labelled films")
        command.add_argument("--model", metavar="VERSION", help="the version (default: the active one)")
        command.add_argument("--site", required=name == "adapt", help="the site's name (letters, digits, . _ -)")
        command.add_argument("--who", default=getpass.getuser(), help="who measured (recorded in the card)")
        command.add_argument("--json", action="store_true", help="print the figures as JSON")
    validate_command, adapt_command = commands.choices["validate"], commands.choices["adapt"]
    validate_command.add_argument("--no-record", action="store_true", help="do not add the result to the card")
    adapt_command.add_argument("--publish", required=True, metavar="NAME", help="the site version's name")
    adapt_command.add_argument("--activate", action="store_true", help="make the site version active")
    adapt_command.add_argument(
        "--target-sensitivity",
        type=float,
        default=DEFAULT_TARGET,
        help=f"COVID-19 sensitivity of the site's operating point (default {DEFAULT_TARGET})",
    )
    adapt_command.add_argument(
        "--held-out",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="score a patient-grouped held-out part of this size (default 0: cross-fitted)",
    )
    adapt_command.add_argument(
        "--methods", default=",".join(METHODS), help=f"candidate methods, comma-separated (default {','.join(METHODS)})"
    )
    adapt_command.add_argument("--seed", type=int, default=0)
    adapt_command.add_argument("--run-dir", help="write progress events here (the Site page's runs)")
    return parser


def _stop_on_sigterm(signum, frame):
    CANCEL_REQUESTED.set()


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    progress = _progress_reporter(args)
    if getattr(args, "run_dir", None):
        try:
            _start_run(Path(args.run_dir))
        except supervisor.RunBusyError as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    try:
        if args.command == "validate":
            result = validate(args.data, args.model, args.site, args.who, record=not args.no_record, progress=progress)
            text = validation_text
        else:
            if not 0.5 <= args.target_sensitivity < 1.0:
                raise ValueError("--target-sensitivity must be at least 0.5 and below 1.")
            if not 0.0 <= args.held_out < 0.6:
                raise ValueError("--held-out must be between 0 (cross-fitted) and 0.5.")
            methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
            result = adapt(
                args.data,
                args.site,
                args.publish,
                args.model,
                args.activate,
                args.held_out,
                args.target_sensitivity,
                methods,
                args.who,
                args.seed,
                progress,
            )
            text = adaptation_text
    except KeyboardInterrupt:
        _event(args, "cancelled")
        print("cancelled; nothing was published", file=sys.stderr)
        return 130
    except (SiteError, registry.ModelVersionError, ValueError) as error:
        _event(args, "failed", error=str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if getattr(args, "run_dir", None):
            supervisor.release_lock()
    if getattr(args, "run_dir", None):
        atomic.write_json(Path(args.run_dir) / RESULT_FILE, result)
    _event(args, "published", version=result.get("version"))
    _event(args, "done")
    print(json.dumps(result, indent=1) if args.json else text(result), flush=True)
    return 0


def _start_run(run_dir: Path) -> None:
    """A run the Site page watches: the training lock (one heavy job at a time), this process, a start event."""
    run_dir.mkdir(parents=True, exist_ok=True)
    supervisor.take_lock(run_dir)
    atomic.write_json(
        run_dir / supervisor.PROCESS_FILE, {"pid": os.getpid(), "started": psutil.Process().create_time()}
    )
    write_event(run_dir, "start")


def _event(args, event: str, **fields) -> None:
    if getattr(args, "run_dir", None):
        write_event(Path(args.run_dir), event, **fields)


def _progress_reporter(args):
    """Progress to stderr as bars when it is a terminal, and to the run's events when there is a run."""
    bars = terminal_progress()

    def report(stage: str, done: int, total: int) -> None:
        _event(args, "site", stage=stage, done=done, total=total)
        bars(stage, done, total)

    return report


if __name__ == "__main__":
    sys.exit(main())
