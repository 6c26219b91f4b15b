"""``python -m train.site.experiment --model BASE --data DIR [DIR ...] [--sources S ...] [--k 10 20 40 80]
[--repeats 3] [--halves] [--limit-per-class N] [--json]``

The site workflow measured on a source the base version never saw: for each k, k films per class of randomly
drawn patients adapt the base (inner cross-validation on them only), and every other film of the site is scored.
One row per k and method: each method with its settings chosen by inner CV, and what ``adapt`` picks among them;
held-out macro AUC, and at the site operating point (COVID-19 at the target sensitivity, from the inner-CV scores)
the COVID-19 sensitivity and the share of non-COVID films called COVID-19. Means over the repeats, with their range.
With ``--halves``: the site bar's protocol instead (``halves``).
"""

import argparse
import json
import sys
from dataclasses import replace

import numpy as np

from core.inference import Predictor, softmax
from core.operating_point import called_indices
from train.site.adapt import (
    DEFAULT_TARGET,
    choose,
    cross_validate,
    finish,
    patient_folds,
    pick,
    ranked,
    site_context,
    with_ensemble,
)
from train.site.films import SiteFilms, read_films
from train.site.methods import METHODS, candidates
from train.site.report import terminal_progress
from train.trainer.shift import POSITIVE, present_macro_auc

__all__ = ["draw_adaptation_rows", "measure", "main"]

AUTO = "adapt's pick"


def draw_adaptation_rows(labels, patients, k: int, rng) -> np.ndarray:
    """Rows of about ``k`` films per class, whole patients drawn at random (a patient's films never split)."""
    chosen = []
    for label in np.unique(labels):
        people = rng.permutation(np.unique(patients[labels == label]))
        taken = 0
        for person in people:
            if taken >= k:
                break
            rows = np.flatnonzero((patients == person) & (labels == label))
            chosen.append(rows)
            taken += len(rows)
    picked = np.unique(np.concatenate(chosen))
    return np.flatnonzero(np.isin(patients, patients[picked]))  # every film of a drawn patient


def scored_figures(labels, probs, calls, names) -> dict:
    covid = names.index(POSITIVE)
    return {
        "macro_auc": present_macro_auc(labels, probs),
        "covid_sensitivity": float((calls[labels == covid] == covid).mean()) if (labels == covid).any() else None,
        "non_covid_called_covid": float((calls[labels != covid] == covid).mean()),
    }


def measure(predictor, films, ks, repeats: int, methods, target: float, seed: int = 0, progress=None) -> list:
    context = site_context(predictor, films, progress, seed=seed)
    names = list(predictor.class_names)
    base_probs = softmax(context.base_logits, predictor.temperature)
    base_calls = called_indices(base_probs, names, predictor.card.operating_point)
    pool = candidates(methods, context.extractor.has_pooled)
    results = []
    for k in ks:
        for repeat in range(repeats):
            rng = np.random.default_rng(seed + 1000 * k + repeat)
            rows = draw_adaptation_rows(context.labels, context.patients, k, rng)
            scored = np.setdiff1d(np.arange(len(context.labels)), rows)
            labels = context.labels[scored]
            results.append(
                {
                    "k": k,
                    "repeat": repeat,
                    "method": "base version",
                    "adaptation_films": len(rows),
                    "scored_films": len(scored),
                    **scored_figures(labels, base_probs[scored], base_calls[scored], names),
                }
            )
            oof = cross_validate(context, rows, pool, seed + repeat, stage=f"k={k} repeat {repeat + 1}")
            tried, oof = with_ensemble(pool, oof, context.labels[rows], methods)
            table = ranked(tried, oof, context.labels[rows])
            picks = {method: pick(tried, table, (method,)) for method in {c.method for c in tried}}
            picks[AUTO] = pick(tried, table, methods)
            fitted = {}
            for method, chosen in picks.items():
                if chosen not in fitted:
                    fitted[chosen] = finish(context, rows, chosen, oof[chosen], table, target, seed + repeat)
                choice = fitted[chosen]
                probs = softmax(choice.fitted.logits(scored), choice.temperature)
                calls = called_indices(probs, names, choice.operating_point)
                results.append(
                    {
                        "k": k,
                        "repeat": repeat,
                        "method": method,
                        "chosen": chosen.name,
                        "adaptation_films": len(rows),
                        "scored_films": len(scored),
                        **scored_figures(labels, probs, calls, names),
                    }
                )
    return results


def halves(predictor, films, repeats: int, methods, target: float, seed: int = 0, progress=None) -> list:
    """The site bar's protocol: ``adapt``'s own choice (inner cross-validation on every film it is given, as it fits
    the model it publishes) on a patient-grouped half of the site, class-stratified; the other half scored."""
    context = site_context(predictor, films, progress, seed=seed)
    names = list(predictor.class_names)
    base_probs = softmax(context.base_logits, predictor.temperature)
    base_calls = called_indices(base_probs, names, predictor.card.operating_point)
    results = []
    for repeat in range(repeats):
        adaptation, scored = patient_folds(context.labels, context.patients, 2, seed + repeat)[0]
        labels = context.labels[scored]
        common = {"k": "half", "repeat": repeat, "adaptation_films": len(adaptation), "scored_films": len(scored)}
        results.append(
            {
                **common,
                "method": "base version",
                **scored_figures(labels, base_probs[scored], base_calls[scored], names),
            }
        )
        choice = choose(context, adaptation, methods, target, seed + repeat, stage=f"half {repeat + 1}/{repeats}")
        probs = softmax(choice.fitted.logits(scored), choice.temperature)
        chosen = next(row["candidate"] for row in choice.table if row["chosen"])
        results.append(
            {
                **common,
                "method": AUTO,
                "chosen": chosen,
                **scored_figures(labels, probs, called_indices(probs, names, choice.operating_point), names),
            }
        )
    return results


def subset(films: SiteFilms, per_class: int, seed: int = 0) -> SiteFilms:
    """About ``per_class`` films per class of randomly drawn whole patients: a small site made of a large set."""
    rows = draw_adaptation_rows(
        films.labels(films.frame["label"].unique()), films.patients, per_class, np.random.default_rng(seed)
    )
    return replace(
        films,
        frame=films.frame.iloc[rows].reset_index(drop=True),
        inputs=films.inputs[rows],
        hints=[films.hints[i] for i in rows],
    )


def summary(results: list) -> list:
    """Mean and range over the repeats of each (k, method)."""
    rows = []
    for key in sorted({(r["k"], r["method"]) for r in results}, key=lambda key: (key[0], _order(key[1]))):
        group = [r for r in results if (r["k"], r["method"]) == key]
        row = {
            "k": key[0],
            "method": key[1],
            "repeats": len(group),
            "adaptation_films": float(np.mean([r["adaptation_films"] for r in group])),
            "scored_films": float(np.mean([r["scored_films"] for r in group])),
        }
        for figure in ("macro_auc", "covid_sensitivity", "non_covid_called_covid"):
            values = [r[figure] for r in group if r[figure] is not None and np.isfinite(r[figure])]
            row[figure] = (
                {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
                if values
                else None
            )
        if key[1] == AUTO:
            row["chosen"] = sorted({r["chosen"] for r in group})
        rows.append(row)
    return rows


def _order(method: str) -> int:
    return (["base version", *METHODS, AUTO]).index(method)


def _shown(row: dict, name: str, percent: bool = False) -> str:
    """A figure's mean over the repeats with its range."""
    value = row[name]
    if value is None:
        return "–"
    if percent:
        return f"{100 * value['mean']:.0f} % ({100 * value['min']:.0f}–{100 * value['max']:.0f})"
    return f"{value['mean']:.3f} ({value['min']:.2f}–{value['max']:.2f})"


def markdown(rows: list) -> str:
    lines = [
        "| k per class | method | films adapted / scored | macro AUC (range) | COVID-19 sensitivity | "
        "non-COVID called COVID-19 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        method = row["method"] + (f" → {'; '.join(row['chosen'])}" if row.get("chosen") else "")
        lines.append(
            f"| {row['k']} | {method} | {row['adaptation_films']:.0f} / {row['scored_films']:.0f} | "
            f"{_shown(row, 'macro_auc')} | {_shown(row, 'covid_sensitivity', True)} | "
            f"{_shown(row, 'non_covid_called_covid', True)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.site.experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the base version (trained without the site's source)")
    parser.add_argument("--data", required=True, nargs="+", help="the site's labelled films (several: merged)")
    parser.add_argument("--sources", nargs="+", help="keep only these manifest sources (e.g. ieee8023 nih_cxr14)")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 40, 80])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--halves",
        action="store_true",
        help="adapt on a patient-grouped half, score the other (--repeats times) instead of the k curve",
    )
    parser.add_argument(
        "--limit-per-class",
        type=int,
        default=0,
        help="first draw about this many films per class (whole patients): a small site",
    )
    parser.add_argument("--json", action="store_true", help="every repeat's figures as JSON")
    args = parser.parse_args(argv)
    methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    predictor = Predictor(args.model)
    films = read_films(args.data, predictor, list(predictor.class_names), args.sources)
    if args.limit_per_class:
        films = subset(films, args.limit_per_class, args.seed)
    progress = terminal_progress()
    if args.halves:
        results = halves(predictor, films, args.repeats, methods, args.target_sensitivity, args.seed, progress)
    else:
        results = measure(predictor, films, args.k, args.repeats, methods, args.target_sensitivity, args.seed, progress)
    print(
        json.dumps({"results": results, "summary": summary(results)}, indent=1)
        if args.json
        else markdown(summary(results))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
