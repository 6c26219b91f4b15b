"""``validate``: what a version does on a site's own labelled films, beside its own test split, recorded in its
card's ``sites`` (``core.site``)."""

import numpy as np

from core.inference import Predictor
from core.operating_point import update_card
from core.site import checked_site_name
from train.site.figures import reference_figures, site_figures, validation_entry
from train.site.films import read_films

__all__ = ["validate", "BATCH"]

BATCH = 64


def validate(folder, version=None, site=None, who: str = "", record: bool = True, root=None, progress=None) -> dict:
    """The site report of ``version`` (default: the active one) on the films at ``folder``; with ``record`` and a
    ``site`` the entry is appended to the version's card. Returns the entry plus ``version`` and the files skipped."""
    site = checked_site_name(site) if site else None
    predictor = Predictor(version, root)
    names = list(predictor.class_names)
    films = read_films(folder, predictor, names)
    probs, flagged = [], []
    for start in range(0, len(films.inputs), BATCH):
        batch_probs, assessments = predictor.assess(
            films.inputs[start : start + BATCH], films.hints[start : start + BATCH]
        )
        probs.append(batch_probs)
        flagged += [assessment.out_of_depth for assessment in assessments]
        if progress:
            progress("reading the films", min(start + BATCH, len(films.inputs)), len(films.inputs))
    figures = site_figures(
        films.labels(names), np.concatenate(probs), names, predictor.card.operating_point, films.patients, flagged
    )
    entry = validation_entry(
        site, who, figures, reference_figures(predictor.version, predictor.card, root), films.data_sha256, films.skipped
    )
    if record and site:
        update_card(predictor.version, lambda card: card.sites.append(entry), root)
    return {"version": predictor.version, **entry, "skipped_files": films.skipped}
