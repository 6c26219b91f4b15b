"""The hospital an installation serves, and what a model version's card says about it.

A version's card keeps one ``sites`` entry per validation at a site (``python -m train.site validate``) and one for
the held-out figures of a version adapted to a site (``python -m train.site adapt``). Every call carries the
version's status at the configured site (``site_status``): not being validated does not make a call uncertain —
the reader decides, but is told.
"""

import re

from core import settings

__all__ = [
    "SiteError",
    "checked_site_name",
    "configured_site",
    "verdict",
    "latest_entry",
    "site_status",
    "site_notice",
    "site_setting_error",
    "sites_rows",
    "USABLE_AUC",
    "COMPARABLE_DROP",
]

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
USABLE_AUC = 0.70  # below this macro AUC at a site a version is not fit for use there
COMPARABLE_DROP = 0.05  # a site AUC within this of the version's own test AUC reads "as where it was trained"
USABLE_VERDICTS = ("fit", "reduced")


class SiteError(ValueError):
    """A site name or a site's labelled set that cannot be used; the message says what is accepted."""


def checked_site_name(name) -> str:
    """``name`` when it is a plain site name (letters, digits, '.', '_', '-'; at most 64; it names a folder)."""
    text = str(name or "").strip()
    if not SITE_NAME.fullmatch(text) or text in (".", ".."):
        raise SiteError(
            f"'{text[:80]}' is not a plain site name: use letters, digits, '.', '_' or '-' (at most 64 "
            "characters, starting with a letter or a digit)."
        )
    return text


def configured_site() -> str | None:
    """The site named by ``CXR_SITE``, or None when none is configured — or when the name is not a plain name
    (``site_setting_error`` says so, for the sidebar and the CLI)."""
    name = settings.site()
    return None if name is None or site_setting_error() else name


def site_setting_error() -> str | None:
    """Why ``CXR_SITE`` cannot be used, or None."""
    name = settings.site()
    try:
        checked_site_name(name) if name is not None else None
    except SiteError as error:
        return f"CXR_SITE: {error}"
    return None


def verdict(site_auc, reference_auc) -> tuple:
    """(code, sentence) for a version's macro AUC at a site beside its AUC where it was trained: ``fit`` (as
    there), ``reduced`` (usable, with this site's lower figures), ``unfit`` (do not use without adapting)."""
    if site_auc is None:
        return "unmeasured", "No macro AUC could be measured here (a class lacks films)."
    where = (
        f"AUC {site_auc:.2f} here against {reference_auc:.2f} where it was trained"
        if reference_auc
        else (f"AUC {site_auc:.2f} here")
    )
    if site_auc < USABLE_AUC:
        return "unfit", f"{where}: do not use it here without adapting."
    if not reference_auc:
        return "fit", f"{where}: usable here, by this site's own figures."
    if site_auc < reference_auc - COMPARABLE_DROP:
        return "reduced", f"{where}: usable here, with this site's lower figures, not the trained ones."
    return "fit", f"{where}: it performs here as where it was trained."


def latest_entry(card, site: str):
    """The card's newest ``sites`` entry for ``site``, or None."""
    entries = [entry for entry in (card.sites or []) if entry.get("site") == site]
    return entries[-1] if entries else None


def site_status(card, site=None) -> dict:
    """What every call says about the site: ``{"name", "validated", "macro_auc", "n", "verdict"}``. ``validated``
    is true when the newest measurement of this version at the site found it usable there; with no site
    configured ``name`` is None and ``validated`` false."""
    if site is None:
        return {"name": None, "validated": False, "macro_auc": None, "n": None, "verdict": None}
    entry = latest_entry(card, site)
    if entry is None:
        return {"name": site, "validated": False, "macro_auc": None, "n": None, "verdict": None}
    auc = (entry.get("figures", {}).get("macro_auc") or {}).get("value")
    code = entry.get("verdict", {}).get("code")
    return {
        "name": site,
        "validated": code in USABLE_VERDICTS,
        "macro_auc": None if auc is None else round(auc, 4),
        "n": entry.get("n"),
        "verdict": code,
    }


def site_notice(status: dict) -> str:
    """The sentence Diagnose, the PDF report and the worklist CSV carry about the site."""
    name = status["name"]
    if name is None:
        return "No site configured (CXR_SITE): this version was measured on other hospitals only."
    if status["n"] is None:
        return f"Not validated at {name}: measured on other hospitals only."
    auc = "no AUC" if status["macro_auc"] is None else f"macro AUC {status['macro_auc']:.2f}"
    if status["validated"]:
        return f"Validated at {name} on {status['n']} films: {auc}."
    return f"Not validated at {name}: measured there on {status['n']} films, {auc} — do not use it here unadapted."


def sites_rows(card) -> list:
    """One row per ``sites`` entry of a card, newest first, for the Models page and ``core info``."""
    rows = []
    for entry in reversed(card.sites or []):
        figures = entry.get("figures", {})
        auc = figures.get("macro_auc") or {}
        called = figures.get("non_covid_called_covid") or {}
        interval = auc.get("ci95") or [None, None]
        rows.append(
            {
                "Site": entry.get("site"),
                "Kind": entry.get("kind"),
                "Date": (entry.get("date") or "")[:10],
                "Who": entry.get("who") or "",
                "Films": entry.get("n"),
                "Macro AUC [95 % CI]": "—"
                if auc.get("value") is None
                else (f"{auc['value']:.3f}" + ("" if None in interval else f" [{interval[0]:.3f}, {interval[1]:.3f}]")),
                "Non-COVID called COVID-19": "—" if called.get("value") is None else f"{100 * called['value']:.0f} %",
                "Verdict": (entry.get("verdict") or {}).get("text", ""),
            }
        )
    return rows
