"""``python -m train.site``: a new hospital's own labelled films — validate a version on them, adapt a version to
them, and measure that workflow on a held-out source (``films``: reading a site's set; ``figures``: what a version
does there; ``methods``: the adaptation methods; ``adapt``: choosing one by inner cross-validation and publishing
a site version; ``experiment``: the k-films curve)."""
