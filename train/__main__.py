"""``python -m train --data DIR [options] [--publish NAME [--activate]]`` or ``python -m train --resume RUN``."""

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from core import registry
from core.registry import REPO_ROOT
from train.checkpoints import write_json_atomically
from train.config import TrainConfig, argument_parser
from train.datasets import DatasetError
from train.progress import write_event

PROCESS_FILE = "process.json"  # the live trainer's pid and start time, so the app sees a run is still going


def runs_root() -> Path:
    return Path(os.environ.get("CXR_RUNS_DIR") or REPO_ROOT / "runs")


def _stop_on_sigterm(signum, frame):
    from train.progress import CANCEL_REQUESTED

    CANCEL_REQUESTED.set()
    raise KeyboardInterrupt("cancelled")


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir() and (runs_root() / args.resume).is_dir():
            run_dir = runs_root() / args.resume
        try:
            config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        except (OSError, ValueError):
            parser.error(f"--resume {args.resume}: no readable run there (config.json missing).")
    else:
        if not args.data:
            parser.error("--data DIR is required (or --resume RUN).")
        values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
        values["data"] = [str(Path(folder).resolve()) for folder in args.data]
        config = TrainConfig.from_dict(values)
        from train.run import new_run_dir

        run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(config, runs_root())
        run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run folder: {run_dir}", flush=True)
    write_json_atomically(run_dir / PROCESS_FILE, {"pid": os.getpid(), "started": time.time()})
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    from train.run import publish_candidate, run

    try:
        candidate = run(config, run_dir, verbose=not args.quiet)
        card = json.loads((candidate / registry.CARD_FILE).read_text())
        for split in ("validation", "test"):
            m = card["metrics"][split]
            covid = m["per_class"]["COVID-19"]["recall"]
            print(f"{split:<10} accuracy {m['accuracy']['value']:.4f}  COVID-19 recall {covid['value']:.4f}  "
                  f"macro AUC {(m['macro_auc'] or {}).get('value', float('nan')):.4f}  n={m['n']}", flush=True)
        if args.publish:
            target = publish_candidate(run_dir, args.publish, activate=args.activate)
            print(f"published {target}{' (active)' if args.activate else ''}", flush=True)
    except KeyboardInterrupt:
        write_event(run_dir, "cancelled")
        print("cancelled; resume with: python -m train --resume " + str(run_dir), file=sys.stderr)
        return 130
    except (DatasetError, registry.ModelVersionError, ValueError) as error:
        write_event(run_dir, "failed", error=str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        write_event(run_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
