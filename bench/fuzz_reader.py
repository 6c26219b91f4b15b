"""Mutation fuzzing of the image reader: real PNG, JPEG and DICOM seeds, mutated, through ``core.imaging.read_image``.

The contract under test: whatever the bytes, the reader returns a ``Radiograph`` or raises ``UnusableImageError``
(with a message for a radiologist), and never takes more than ``--limit-s`` seconds. Seeds are built at run time
from the real radiographs in ../shared/data (pool JPEGs as they are; one pool film re-encoded as a progressive
JPEG, PNG 8/16-bit, TIFF 16-bit, lossless WebP, BMP and GIF; the real DICOM; native / RLE / preamble-less DICOMs
of the pool film); nothing is written to disk unless ``--save-failures`` is given.

Mutations (each input is one mutation of one seed, drawn from a NumPy generator with ``--seed``, so a run is
reproducible and an input is named by its index): bit flips, overwrites with boundary bytes, truncations,
splices of two seeds (also across formats), deleted and repeated ranges, and header mutations that keep the
container parseable (PNG IHDR fields with the CRC recomputed, JPEG start-of-frame fields, DICOM element values:
sizes, bit depths, photometric interpretation, window, rescale, frames, transfer syntax, pixel data length;
boundary bytes in the first 64 bytes of the other containers).

Each input is read in a worker process (so a crash or a hang is seen, not suffered); a worker that does not
answer within ``HANG_S`` is killed, the input counted as a hang, and a new worker started. Times are the
reader's wall time in the worker and its CPU time (the machine is shared: CPU time separates the reader's own
cost from waiting for a core).

    nice .venv/bin/python bench/fuzz_reader.py [--inputs 100000] [--seed 0] [--limit-s 2] [--json FILE]
"""

import argparse
import collections
import io
import json
import multiprocessing
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import SHARED_DATA  # noqa: E402

POOL = SHARED_DATA / "cxr"
DICOM_FILE = SHARED_DATA / "dicom" / "rsna_cr_jpeg_baseline.dcm"
POOL_CLASSES = ("COVID19", "NORMAL", "PNEUMONIA")
HANG_S = 30.0
REPORT_EVERY = 5000

BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
BOUNDARY_SIZES = (0, 1, 2, 63, 64, 65, 159, 160, 255, 256, 4096, 8192, 32767, 32768, 65535)
PNG_IHDR_OFFSET = 8 + 4 + 4  # signature, chunk length, "IHDR"
PNG_FIELDS = {  # field: (offset in IHDR data, struct format, values)
    "width": (0, ">I", BOUNDARY_SIZES + (100_000, 2**31 - 1, 2**32 - 1)),
    "height": (4, ">I", BOUNDARY_SIZES + (100_000, 2**31 - 1, 2**32 - 1)),
    "bit_depth": (8, ">B", (0, 1, 2, 3, 4, 8, 16, 255)),
    "colour_type": (9, ">B", (0, 1, 2, 3, 4, 5, 6, 7, 255)),
    "interlace": (12, ">B", (0, 1, 2, 255)),
}
JPEG_FIELDS = {  # field: (offset after the SOF marker, struct format, values)
    "precision": (4, ">B", (0, 1, 8, 12, 16, 255)),
    "height": (5, ">H", BOUNDARY_SIZES),
    "width": (7, ">H", BOUNDARY_SIZES),
    "components": (9, ">B", (0, 1, 2, 3, 4, 255)),
    "sampling": (11, ">B", (0x00, 0x11, 0x22, 0x44, 0xFF)),
}
SHORT_VALUES = (0, 1, 2, 7, 8, 12, 15, 16, 17, 32, 64, 255, 32767, 32768, 65535)
DICOM_FIELDS = {  # keyword: ((group, element), VR, values); text values are padded or cut to the stored length
    "SamplesPerPixel": ((0x0028, 0x0002), b"US", SHORT_VALUES),
    "Rows": ((0x0028, 0x0010), b"US", SHORT_VALUES),
    "Columns": ((0x0028, 0x0011), b"US", SHORT_VALUES),
    "BitsAllocated": ((0x0028, 0x0100), b"US", SHORT_VALUES),
    "BitsStored": ((0x0028, 0x0101), b"US", SHORT_VALUES),
    "HighBit": ((0x0028, 0x0102), b"US", SHORT_VALUES),
    "PixelRepresentation": ((0x0028, 0x0103), b"US", (0, 1, 2, 65535)),
    "PhotometricInterpretation": (
        (0x0028, 0x0004),
        b"CS",
        (b"MONOCHROME1", b"RGB", b"YBR_FULL", b"PALETTE COLOR", b"", b"\x00\xff"),
    ),
    "WindowCenter": ((0x0028, 0x1050), b"DS", (b"0", b"-1", b"1e308", b"-1e308", b"nan", b"inf", b"1\\2", b"x")),
    "WindowWidth": ((0x0028, 0x1051), b"DS", (b"0", b"-1", b"1", b"1e-30", b"1e308", b"nan", b"inf", b"x")),
    "RescaleSlope": ((0x0028, 0x1053), b"DS", (b"0", b"-1", b"1e308", b"1e-308", b"nan", b"inf", b"x")),
    "RescaleIntercept": ((0x0028, 0x1052), b"DS", (b"0", b"-1e308", b"1e308", b"nan", b"x")),
    "NumberOfFrames": ((0x0028, 0x0008), b"IS", (b"0", b"2", b"-1", b"99999999", b"x")),
    "TransferSyntaxUID": (
        (0x0002, 0x0010),
        b"UI",
        (
            b"1.2.840.10008.1.2",
            b"1.2.840.10008.1.2.2",
            b"1.2.840.10008.1.2.5",
            b"1.2.840.10008.1.2.4.50",
            b"1.2.840.10008.1.2.4.90",
            b"1.2.840.10008.1.2.1.99",
            b"9",
        ),
    ),
    "PixelDataLength": ((0x7FE0, 0x0010), b"OW", (0, 1, 2, 0xFFFFFFFE, 0xFFFFFFFF, 2**31)),
}
LONG_VRS = (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN")
HEADER_BYTES = 64


# ---- seeds ----


def _pool_file(label: str, index: int = 0) -> Path:
    return sorted((POOL / label).glob("*.jpg"))[index]


def _grey(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _dicom(
    stored: np.ndarray, photometric="MONOCHROME2", bits_stored=None, compress_as=None, preamble=True, **elements
) -> bytes:
    """A DICOM file of ``stored`` with ``elements`` set (explicit VR little endian unless compressed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = generate_uid(entropy_srcs=["fuzz-seed"])
    dataset.Modality = "CR"
    dataset.PatientName = "FUZZ^SEED"
    dataset.set_pixel_data(stored, photometric, bits_stored or stored.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    if compress_as is not None:
        dataset.compress(compress_as)
    buffer = io.BytesIO()
    if preamble:
        dataset.save_as(buffer, enforce_file_format=True)
    else:
        dataset.file_meta = FileMetaDataset()
        dataset.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def build_seeds() -> dict:
    """{name: bytes} of real radiographs in the containers the reader accepts (see the module docstring)."""
    import cv2
    from PIL import Image
    from pydicom.uid import RLELossless

    grey = _grey(_pool_file("NORMAL"))
    twelve = np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)

    def pillow(pixels, image_format, **options) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, image_format, **options)
        return buffer.getvalue()

    return {
        **{f"jpeg-{label.lower()}": _pool_file(label).read_bytes() for label in POOL_CLASSES},
        "jpeg-progressive": pillow(grey, "JPEG", quality=90, progressive=True),
        "tiff-16bit": pillow(grey.astype(np.uint16) * 257, "TIFF"),
        "webp-lossless": pillow(grey, "WEBP", lossless=True),
        "bmp-8bit": pillow(grey, "BMP"),
        "gif-8bit": pillow(grey, "GIF"),
        "png-8bit": cv2.imencode(".png", grey)[1].tobytes(),
        "png-16bit": cv2.imencode(".png", grey.astype(np.uint16) * 257)[1].tobytes(),
        "dicom-rsna-jpeg": DICOM_FILE.read_bytes(),
        "dicom-native-12bit": _dicom(
            twelve,
            bits_stored=12,
            WindowCenter="2048",
            WindowWidth="4096",
            RescaleSlope="1",
            RescaleIntercept="0",
            NumberOfFrames="1",
        ),
        "dicom-rle-monochrome1": _dicom(255 - grey, photometric="MONOCHROME1", compress_as=RLELossless),
        "dicom-no-preamble": _dicom(grey, preamble=False, WindowCenter="128", WindowWidth="256"),
    }


# ---- mutations: pure functions of their parameters (the test draws them with hypothesis, the bench with NumPy) ----


def flip_bits(data: bytes, bit_positions) -> bytes:
    mutated = bytearray(data)
    for bit in bit_positions:
        mutated[(bit // 8) % len(mutated)] ^= 1 << (bit % 8)
    return bytes(mutated)


def overwrite(data: bytes, position: int, chunk: bytes) -> bytes:
    position %= len(data)
    return data[:position] + chunk + data[position + len(chunk) :]


def truncate(data: bytes, length: int) -> bytes:
    return data[: length % len(data)]


def splice(head: bytes, tail: bytes, head_cut: int, tail_cut: int) -> bytes:
    return head[: head_cut % len(head)] + tail[tail_cut % len(tail) :]


def delete_range(data: bytes, start: int, length: int) -> bytes:
    start %= len(data)
    return data[:start] + data[start + length :]


def repeat_range(data: bytes, start: int, length: int, times: int) -> bytes:
    start %= len(data)
    return data[:start] + data[start : start + length] * times + data[start:]


def png_header(data: bytes, field: str, value: int) -> bytes:
    """``data`` with one IHDR field set and the chunk's CRC recomputed (so the decoder reads on)."""
    offset, layout, _ = PNG_FIELDS[field]
    mutated = bytearray(data)
    struct.pack_into(layout, mutated, PNG_IHDR_OFFSET + offset, value)
    body = bytes(mutated[PNG_IHDR_OFFSET - 4 : PNG_IHDR_OFFSET + 13])
    struct.pack_into(">I", mutated, PNG_IHDR_OFFSET + 13, zlib.crc32(body))
    return bytes(mutated)


def jpeg_header(data: bytes, field: str, value: int) -> bytes:
    """``data`` with one field of its first start-of-frame segment set (unchanged when it has none)."""
    offset, layout, _ = JPEG_FIELDS[field]
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        start = data.find(marker, 2)
        if start != -1 and start + offset + struct.calcsize(layout) <= len(data):
            mutated = bytearray(data)
            struct.pack_into(layout, mutated, start + offset, value)
            return bytes(mutated)
    return data


def dicom_element_offset(data: bytes, keyword: str):
    """(value offset, value length, length-field offset, length-field format) of an explicit-VR element, or None."""
    (group, element), vr, _ = DICOM_FIELDS[keyword]
    tag = struct.pack("<HH", group, element)
    start = data.find(tag)
    while start != -1:
        found_vr = data[start + 4 : start + 6]
        if keyword == "PixelDataLength" and found_vr in LONG_VRS or found_vr == vr:
            if found_vr in LONG_VRS:
                return start + 12, struct.unpack_from("<I", data, start + 8)[0], start + 8, "<I"
            return start + 8, struct.unpack_from("<H", data, start + 6)[0], start + 6, "<H"
        start = data.find(tag, start + 1)
    return None


def dicom_field(data: bytes, keyword: str, value) -> bytes:
    """``data`` with one element's value replaced in place (text padded or cut to the stored length; for the
    pixel data, its declared length); unchanged when the element is not there."""
    located = dicom_element_offset(data, keyword)
    if located is None:
        return data
    value_at, length, length_at, length_layout = located
    mutated = bytearray(data)
    if keyword == "PixelDataLength":
        struct.pack_into(length_layout, mutated, length_at, value)
    elif isinstance(value, int):
        if length >= 2:
            struct.pack_into("<H", mutated, value_at, value)
    else:
        mutated[value_at : value_at + length] = value[:length].ljust(length, b" ")
    return bytes(mutated)


HEADER_MUTATIONS = {
    "PNG": (png_header, PNG_FIELDS),
    "JPEG": (jpeg_header, JPEG_FIELDS),
    "DICOM": (dicom_field, DICOM_FIELDS),
}


def seed_format(name: str) -> str:
    """The container a seed is in, from its name ("png-8bit" → "PNG")."""
    return name.split("-")[0].upper()


def header_bytes(data: bytes, position: int, chunk: bytes) -> bytes:
    """For the containers without a field table here (TIFF, WebP, BMP, GIF): boundary bytes written into the
    first ``HEADER_BYTES`` bytes, where their sizes, offsets and counts are."""
    return overwrite(data, position % HEADER_BYTES, chunk)


# ---- the bench's random draws ----

MUTATIONS = ("flip", "overwrite", "truncate", "splice", "delete", "repeat", "header")
MUTATION_WEIGHTS = np.array([25, 10, 15, 10, 7, 8, 25], np.float64) / 100


def random_input(rng: np.random.Generator, seeds: dict) -> tuple:
    """(description, bytes) of one random mutation of one random seed."""
    names = sorted(seeds)
    name = names[rng.integers(len(names))]
    data = seeds[name]
    kind = MUTATIONS[rng.choice(len(MUTATIONS), p=MUTATION_WEIGHTS)]
    size = len(data)
    if kind == "flip":
        count = int(rng.integers(1, 33))
        return f"{name} flip {count} bits", flip_bits(data, rng.integers(0, size * 8, count))
    if kind == "overwrite":
        chunk = bytes(rng.choice(BOUNDARY_BYTES, int(rng.integers(1, 9))).tolist())
        position = int(rng.integers(size))
        return f"{name} overwrite {chunk.hex()} at {position}", overwrite(data, position, chunk)
    if kind == "truncate":
        length = int(rng.integers(size))
        return f"{name} truncate to {length}", truncate(data, length)
    if kind == "splice":
        other = names[rng.integers(len(names))]
        cuts = int(rng.integers(size)), int(rng.integers(len(seeds[other])))
        return f"{name}[:{cuts[0]}] + {other}[{cuts[1]}:]", splice(data, seeds[other], *cuts)
    if kind in ("delete", "repeat"):
        start, length = int(rng.integers(size)), int(rng.integers(1, 4097))
        if kind == "delete":
            return f"{name} delete {length} at {start}", delete_range(data, start, length)
        times = int(rng.integers(2, 9))
        return f"{name} repeat {length}×{times} at {start}", repeat_range(data, start, length, times)
    if seed_format(name) not in HEADER_MUTATIONS:
        chunk, position = bytes(rng.choice(BOUNDARY_BYTES, int(rng.integers(1, 5))).tolist()), int(rng.integers(64))
        return f"{name} header bytes {chunk.hex()} at {position}", header_bytes(data, position, chunk)
    mutate, fields = HEADER_MUTATIONS[seed_format(name)]
    field = sorted(fields)[rng.integers(len(fields))]
    values = fields[field][-1]
    value = values[rng.integers(len(values))]
    return f"{name} header {field}={value!r}", mutate(data, field, value)


# ---- running ----


def _worker(connection) -> None:
    """Read each input sent, answer (outcome, wall s, CPU s, message); outcome is "ok", "UnusableImageError" or
    the name of whatever else escaped."""
    import os
    import warnings

    from core.imaging import UnusableImageError, read_image

    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the decoders' C libraries print every complaint to stderr
    warnings.simplefilter("ignore")
    while (data := connection.recv()) is not None:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            read_image(data)
            outcome, message = "ok", ""
        except UnusableImageError as error:
            outcome, message = "UnusableImageError", str(error)
        except BaseException as error:  # what the fuzzer looks for: report it, keep going
            outcome, message = type(error).__name__, repr(error)[:300]
        connection.send((outcome, time.perf_counter() - wall, time.process_time() - cpu, message))


class Reader:
    """A worker process reading inputs; restarted after a crash or a hang."""

    def __init__(self):
        self.context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self):
        self.connection, child = self.context.Pipe()
        self.process = self.context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def read(self, data: bytes) -> tuple:
        try:
            self.connection.send(data)
            if self.connection.poll(HANG_S):
                return self.connection.recv()
            outcome = "hang"
        except (EOFError, OSError):
            outcome = "crash"
        self.process.kill()
        self.process.join()
        exit_code = self.process.exitcode
        self._start()
        return outcome, HANG_S, 0.0, f"worker exit code {exit_code}"

    def close(self):
        self.connection.send(None)
        self.process.join(10)


def percentile(values, q) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def fuzz(inputs: int, seed: int, limit_s: float, save_failures=None, log=print) -> dict:
    """Run ``inputs`` mutated inputs; the summary: counts by outcome, times, and every input that broke the
    contract (another exception, a crash, a hang, or over ``limit_s``)."""
    seeds = build_seeds()
    rng = np.random.default_rng(seed)
    reader = Reader()
    outcomes, walls, cpus, failures = collections.Counter(), [], [], []
    slowest = (0.0, "")
    started = time.perf_counter()
    for index in range(inputs):
        description, data = random_input(rng, seeds)
        outcome, wall, cpu, message = reader.read(data)
        outcomes[outcome] += 1
        walls.append(wall)
        cpus.append(cpu)
        slowest = max(slowest, (wall, description))
        if outcome not in ("ok", "UnusableImageError") or wall > limit_s:
            failures.append(
                {
                    "index": index,
                    "input": description,
                    "outcome": outcome,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "message": message,
                }
            )
            if save_failures:
                Path(save_failures).mkdir(parents=True, exist_ok=True)
                (Path(save_failures) / f"{index:07d}.bin").write_bytes(data)
        if (index + 1) % REPORT_EVERY == 0:
            log(
                f"{index + 1:,} inputs, {time.perf_counter() - started:.0f} s, {dict(outcomes)}, "
                f"{len(failures)} failures"
            )
    reader.close()
    return {
        "inputs": inputs,
        "seed": seed,
        "seeds": {name: len(data) for name, data in sorted(seeds.items())},
        "outcomes": dict(outcomes.most_common()),
        "limit_s": limit_s,
        "wall_ms": {"p50": 1e3 * percentile(walls, 50), "p99": 1e3 * percentile(walls, 99), "max": 1e3 * max(walls)},
        "cpu_ms": {"p50": 1e3 * percentile(cpus, 50), "p99": 1e3 * percentile(cpus, 99), "max": 1e3 * max(cpus)},
        "slowest": {"wall_s": round(slowest[0], 3), "input": slowest[1]},
        "failures": failures,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def print_summary(summary: dict) -> None:
    print(
        f"{summary['inputs']:,} mutated inputs from {len(summary['seeds'])} real seeds (seed {summary['seed']}), "
        f"{summary['elapsed_s']:.0f} s"
    )
    for outcome, count in summary["outcomes"].items():
        print(f"  {outcome:<22} {count:>8,}")
    for clock in ("wall_ms", "cpu_ms"):
        times = summary[clock]
        print(
            f"  {clock[:-3]:<5} time per input: p50 {times['p50']:.1f} ms, p99 {times['p99']:.1f} ms, "
            f"max {times['max']:.1f} ms"
        )
    print(f"  slowest: {summary['slowest']['input']} ({summary['slowest']['wall_s']} s)")
    print(
        f"  contract broken (not UnusableImageError, crash, hang, or over {summary['limit_s']} s): "
        f"{len(summary['failures'])}"
    )
    for failure in summary["failures"][:20]:
        print(
            f"    #{failure['index']} {failure['input']}: {failure['outcome']} {failure['wall_s']} s "
            f"{failure['message']}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--save-failures", type=Path, help="write each failing input here as <index>.bin")
    args = parser.parse_args(argv)
    summary = fuzz(
        args.inputs,
        args.seed,
        args.limit_s,
        args.save_failures,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
