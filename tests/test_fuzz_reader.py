"""core.imaging.read_image under mutation (hypothesis): real PNG, JPEG, DICOM, TIFF, WebP, BMP and GIF seeds
(built at test time from ../shared/data by bench/fuzz_reader.py, never stored), mutated by bit flips, boundary
bytes, truncations, splices, deleted or repeated ranges and header fields; the only exception that may escape is
``UnusableImageError`` and no input takes more than 2 s (hypothesis' deadline). The long run is
``bench/fuzz_reader.py``; the cases it found are kept below."""

import functools
import struct
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_reader import (
    BOUNDARY_BYTES,
    HEADER_BYTES,
    HEADER_MUTATIONS,
    build_seeds,
    delete_range,
    flip_bits,
    header_bytes,
    overwrite,
    repeat_range,
    seed_format,
    splice,
    truncate,
)
from core.imaging import UnusableImageError, read_image
from tests.conftest import needs_shared_data

pytestmark = [needs_shared_data, pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom warns on bad values

LIMIT = timedelta(seconds=2)
EXAMPLES = 400
MAX_RANGE = 4096


@functools.lru_cache(maxsize=1)
def seeds() -> dict:
    return build_seeds()


@st.composite
def mutated_files(draw) -> bytes:
    """One mutation of one real seed, its parameters drawn by hypothesis (so a failure shrinks to a small one)."""
    names = sorted(seeds())
    name = draw(st.sampled_from(names))
    data = seeds()[name]
    position = st.integers(0, len(data) - 1)
    kind = draw(st.sampled_from(("flip", "overwrite", "truncate", "splice", "delete", "repeat", "header")))
    if kind == "flip":
        return flip_bits(data, draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=32)))
    if kind == "overwrite":
        chunk = bytes(draw(st.lists(st.sampled_from(BOUNDARY_BYTES), min_size=1, max_size=8)))
        return overwrite(data, draw(position), chunk)
    if kind == "truncate":
        return truncate(data, draw(position))
    if kind == "splice":
        other = seeds()[draw(st.sampled_from(names))]
        return splice(data, other, draw(position), draw(st.integers(0, len(other) - 1)))
    if kind == "delete":
        return delete_range(data, draw(position), draw(st.integers(1, MAX_RANGE)))
    if kind == "repeat":
        return repeat_range(data, draw(position), draw(st.integers(1, MAX_RANGE)), draw(st.integers(2, 8)))
    if seed_format(name) not in HEADER_MUTATIONS:
        chunk = bytes(draw(st.lists(st.sampled_from(BOUNDARY_BYTES), min_size=1, max_size=4)))
        return header_bytes(data, draw(st.integers(0, HEADER_BYTES - 1)), chunk)
    mutate, fields = HEADER_MUTATIONS[seed_format(name)]
    field = draw(st.sampled_from(sorted(fields)))
    return mutate(data, field, draw(st.sampled_from(fields[field][-1])))


def read_or_refuse(data: bytes) -> None:
    """Read ``data``; a refusal with ``UnusableImageError`` is a fine answer, anything else escapes."""
    try:
        read_image(data)
    except UnusableImageError as error:
        assert str(error)


@settings(
    max_examples=EXAMPLES,
    deadline=LIMIT,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_files())
def test_mutated_real_files_are_read_or_refused_and_never_hang(data):
    read_or_refuse(data)


def test_every_seed_is_a_readable_radiograph():
    formats = {name: read_image(data).format for name, data in seeds().items()}
    assert formats == {name: seed_format(name) for name in formats}


def with_png_chunk_length(data: bytes, kind: bytes, length: int) -> bytes:
    """``data`` with the declared length of its first ``kind`` chunk replaced."""
    at = data.index(kind) - 4
    return data[:at] + struct.pack(">I", length) + data[at + 4 :]


@pytest.mark.parametrize("length", [0x80002000, 0x7FFFFFFF, 0x10000000])
def test_a_png_chunk_longer_than_the_file_is_refused_at_once(length):
    """Found by bench/fuzz_reader.py: one flipped bit in an IDAT length made OpenCV allocate and clear 2 GB
    before failing (1.5–12 s for a 57 kB file)."""
    damaged = with_png_chunk_length(seeds()["png-16bit"], b"IDAT", length)
    started = time.perf_counter()
    with pytest.raises(UnusableImageError, match="damaged or incomplete"):
        read_image(damaged)
    assert time.perf_counter() - started < LIMIT.total_seconds()
