"""Decode and resize every image once; later runs and epochs read the cached arrays.

The cache key covers the file list (path, size, modification time), the sizes and the preprocessing, so a
changed file or a changed preprocessing never reuses stale arrays.
"""

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core import atomic, settings
from core.imaging import UnusableImageError, read_grey
from core.preprocess import NO_PREPROCESSING, Preprocessing, prepare_grey

__all__ = ["cache_key", "decode_resized", "load_resized"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_key(paths, sizes, preprocessing: Preprocessing = NO_PREPROCESSING) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(sizes), preprocessing.describe()]).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode_one(path, sizes, preprocessing):
    try:
        grey = read_grey(path)
    except UnusableImageError as error:
        return None, str(error)
    return [np.round(prepare_grey(grey, size, preprocessing) * 255).astype(np.uint8) for size in sizes], None


def decode_resized(paths, sizes, workers=None, preprocessing: Preprocessing = NO_PREPROCESSING):
    """Decode ``paths`` in parallel; returns ({size: uint8 (N, s, s)}, readable mask, {path: error})."""
    workers = workers or os.cpu_count() or 1
    arrays = {size: np.zeros((len(paths), size, size), np.uint8) for size in sizes}
    readable = np.zeros(len(paths), bool)
    errors = {}
    with ThreadPoolExecutor(workers) as pool:
        for index, (resized, error) in enumerate(pool.map(lambda p: _decode_one(p, sizes, preprocessing), paths)):
            if error is not None:
                errors[str(paths[index])] = error
                continue
            readable[index] = True
            for size, array in zip(sizes, resized):
                arrays[size][index] = array
    return arrays, readable, errors


def load_resized(paths, sizes, use_cache=True, preprocessing: Preprocessing = NO_PREPROCESSING):
    """Like ``decode_resized`` but read from / written to the on-disk cache. Unreadable files are reported in
    one warning that names them."""
    paths = [str(p) for p in paths]
    cache_file = settings.cache_dir() / f"resized-{cache_key(paths, sizes, preprocessing)}.npz"
    if use_cache and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as stored:
            arrays = {size: stored[f"x{size}"] for size in sizes}
            readable = stored["readable"]
            errors = json.loads(str(stored["errors"]))
    else:
        arrays, readable, errors = decode_resized(paths, sizes, preprocessing=preprocessing)
        if use_cache:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(cache_file, suffix=".npz") as temporary:
                np.savez(
                    temporary, readable=readable, errors=json.dumps(errors), **{f"x{s}": a for s, a in arrays.items()}
                )
    if errors:
        listed = "; ".join(f"{path}: {message}" for path, message in list(errors.items())[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        log.warning("Skipped %d unreadable file(s): %s%s", len(errors), listed, more)
    return arrays, readable, errors
