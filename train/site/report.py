"""The site reports as text: what ``python -m train.site`` prints and the Site page shows."""

import sys

__all__ = ["validation_text", "adaptation_text", "figure_rows", "terminal_progress"]

ROWS = (  # (label, key in the figures, kind)
    ("Macro AUC", "macro_auc", "auc"),
    ("Sensitivity", "sensitivity", "proportion"),
    ("Specificity", "specificity", "proportion"),
    ("PPV", "ppv", "proportion"),
    ("NPV", "npv", "proportion"),
    ("Accuracy at the operating point", "accuracy", "proportion"),
    ("Non-COVID films called COVID-19", "non_covid_called_covid", "proportion"),
    ("Normals called Normal", "normal_called_normal", "proportion"),
    ("Wrong at p ≥ 0.9", "wrong_confident", "proportion"),
    ("ECE (calibration error)", "ece", "number"),
    ("Films flagged", "flagged", "proportion"),
)


def _shown(value, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "number":
        return f"{value:.3f}"
    number = value.get("value")
    if number is None:
        return "—"
    interval = value.get("ci95")
    text = f"{number:.3f}" if kind == "auc" else f"{100 * number:.1f} %"
    if interval and None not in interval:
        low, high = interval
        text += f" [{low:.3f}, {high:.3f}]" if kind == "auc" else f" [{100 * low:.1f}, {100 * high:.1f}]"
    if kind == "proportion" and "k" in value:
        text += f" ({value['k']}/{value['n']})"
    return text


def figure_rows(figures: dict, reference, labels=("here", "own test split")) -> list:
    """[{figure, <labels[0]>, <labels[1]>}] for a table: each figure with its interval beside the reference's."""
    rows = []
    positive = figures.get("positive_class", "COVID-19")
    for label, key, kind in ROWS:
        shown = f"{label} ({positive})" if key in ("sensitivity", "specificity", "ppv", "npv") else label
        row = {"figure": shown, labels[0]: _shown(figures.get(key), kind)}
        if reference is not None:
            row[labels[1]] = _shown(reference.get(key), kind)
        rows.append(row)
    for name, value in figures["per_class_auc"].items():
        row = {"figure": f"AUC {name} vs rest", labels[0]: _shown(value, "auc")}
        if reference is not None:
            row[labels[1]] = _shown((reference.get("per_class_auc") or {}).get(name), "auc")
        rows.append(row)
    return rows


def _table(rows: list) -> str:
    columns = list(rows[0])
    widths = [max(len(str(row.get(c, ""))) for row in rows + [dict(zip(columns, columns))]) for c in columns]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for row in rows]
    return "\n".join(lines)


def _matrix(figures: dict, class_names) -> str:
    rows = [
        {"true \\ called": name, **dict(zip(class_names, counts))}
        for name, counts in zip(class_names, figures["confusion_matrix"])
    ]
    return _table(rows)


def validation_text(result: dict) -> str:
    figures = result["figures"]
    names = list(figures["n_per_class"])
    point = figures.get("operating_point")
    rule = f"{point['positive_class']} at p ≥ {point['threshold']:.3f}" if point else "the most probable class"
    lines = [
        f"{result['version']} at {result['site'] or 'an unnamed site'}: {figures['n']} films of "
        f"{figures['patients']} patients ({', '.join(f'{n} {k}' for k, n in figures['n_per_class'].items())})",
        f"Verdict: {result['verdict']['text']}",
        f"Calls at the version's operating point: {rule}",
        "",
        _table(figure_rows(figures, result.get("reference"))),
        "",
        _matrix(figures, names),
    ]
    if result.get("skipped_files"):
        lines += ["", f"Skipped {len(result['skipped_files'])} unreadable file(s):"]
        lines += [f"  {name}: {why}" for name, why in result["skipped_files"].items()]
    if not result["site"]:
        lines += ["", "Not recorded in the card: give --site NAME to record it."]
    return "\n".join(lines)


def adaptation_text(result: dict) -> str:
    held = result["held_out"]
    lines = [
        f"Published {result['version']}{' (active)' if result['activated'] else ''}: {result['base_version']} "
        f"adapted to {result['site']} by {result['method']} {result['settings']}",
        f"Held-out figures: {result['design']}",
        "",
        _table(figure_rows(held["site_version"], held["base_version"], ("site version", "base version"))),
        "",
        "Candidates (inner cross-validation, macro AUC):",
    ]
    lines += [
        f"  {'*' if row['chosen'] else ' '} {row['candidate']}: "
        f"{'—' if row['macro_auc'] is None else format(row['macro_auc'], '.3f')}"
        for row in result["candidates"]
    ]
    if result.get("skipped_files"):
        lines += ["", f"Skipped {len(result['skipped_files'])} unreadable file(s):"]
        lines += [f"  {name}: {why}" for name, why in result["skipped_files"].items()]
    return "\n".join(lines)


def terminal_progress():
    """A ``progress(stage, done, total)`` callback drawing one bar per stage on stderr when it is a terminal
    (tqdm); it does nothing otherwise, so logs and pipes stay clean."""
    bars = {}

    def report(stage: str, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False)
        bars[stage].total = total
        bars[stage].n = done
        bars[stage].refresh()

    return report
