"""``python -m train --data DIR [options] [--publish NAME [--activate]]`` or ``python -m train --resume RUN``.

A trainer started here takes the same run lock as one the Retrain page starts, so the two never train at once.
"""

from core import settings

settings.quiet_tensorflow()

import json  # noqa: E402  (TensorFlow's logging level must be set before anything imports it)
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from core import atomic, registry  # noqa: E402
from core.card import ModelCard  # noqa: E402
from train.jobs import supervisor  # noqa: E402
from train.trainer.checkpoints import read_state  # noqa: E402
from train.trainer.config import TrainConfig, argument_parser, config_from_arguments  # noqa: E402
from train.trainer.datasets import DatasetError  # noqa: E402
from train.trainer.progress import CANCEL_REQUESTED, write_event  # noqa: E402
from train.trainer.run import new_run_dir, publish_candidate, run  # noqa: E402


def _stop_on_sigterm(signum, frame):
    CANCEL_REQUESTED.set()
    raise KeyboardInterrupt("cancelled")


def _run_dir(args, parser) -> tuple:
    """(run folder, recipe) for a new run or the one being resumed."""
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir() and (settings.runs_dir() / args.resume).is_dir():
            run_dir = settings.runs_dir() / args.resume
        try:
            return run_dir, TrainConfig.from_dict(json.loads((run_dir / supervisor.CONFIG_FILE).read_text()))
        except (OSError, ValueError) as error:
            parser.error(f"--resume {args.resume}: no readable run there ({error}).")
    if not args.data:
        parser.error("--data DIR is required (or --resume RUN).")
    config = config_from_arguments(args)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(config, settings.runs_dir())
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, config


def print_summary(card: ModelCard) -> None:
    """The new candidate's card as ``python -m core info`` prints it (``core.report.info_text``): its facts
    (``ModelCard.facts``), headline figures with intervals, flag rates and caveat."""
    from core.report import info_text

    print(info_text(card), flush=True)


def cancelled_message(run_dir: Path) -> str:
    """What a cancelled run can do next: resume from its last saved epoch (the folder named as the reader knows
    it: relative to where the command ran, or by its name), or nothing when no epoch was saved."""
    saved = read_state(run_dir)["epoch"]
    if not saved:
        return "cancelled before the first epoch ended: no epoch was saved; start the run again"
    try:
        shown = run_dir.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = run_dir.name
    return f"cancelled after epoch {saved}; resume with: python -m train --resume {shown}"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argument_parser()
    args = parser.parse_args(argv)
    run_dir, config = _run_dir(args, parser)
    print(f"run folder: {run_dir}", flush=True)
    try:
        supervisor.take_lock(run_dir)
    except supervisor.RunBusyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    atomic.write_json(
        run_dir / supervisor.PROCESS_FILE, {"pid": os.getpid(), "started": psutil.Process().create_time()}
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        candidate = run(config, run_dir, verbose=not args.quiet)
        print_summary(ModelCard.load(candidate / registry.CARD_FILE))
        if args.publish:
            target = publish_candidate(run_dir, args.publish, activate=args.activate)
            print(f"published {target}{' (active)' if args.activate else ''}", flush=True)
    except KeyboardInterrupt:
        write_event(run_dir, "cancelled")
        print(cancelled_message(run_dir), file=sys.stderr)
        return 130
    except (DatasetError, registry.ModelVersionError, ValueError) as error:
        write_event(run_dir, "failed", error=str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        write_event(run_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        supervisor.release_lock()
    return 0


if __name__ == "__main__":
    sys.exit(main())
