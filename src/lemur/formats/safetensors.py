"""safetensors files, read strictly and written as the safetensors library does.

A safetensors file is an 8-byte little-endian header length N, N bytes of
JSON (UTF-8, padded with spaces), then the data. The header maps each tensor's
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data), with an optional ``"__metadata__"`` of strings.

:func:`read` checks all of it before reading any tensor, and refuses, with a
ValueError that names the file and the tensor: a header over
:data:`MAX_HEADER_BYTES` or past the end of the file; anything but a JSON
object with unique keys; an unknown dtype or a malformed shape; offsets whose
span is not the shape's size, that leave the data, that overlap, or that do not
cover the data exactly, one tensor after the other (what the safetensors
library itself refuses). Nothing is allocated from a declared size before
that size is known to lie in the file. Tensors come back as aligned float32
arrays (F16, BF16 and F64 widened or rounded; integer types as int64).
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from lemur._scratch import aligned_empty
from lemur.formats.archive import c_order, write_atomically

#: The largest header read (the safetensors library allows 100 MB; a model's
#: header is a few KB).
MAX_HEADER_BYTES = 16 * 2**20

#: safetensors dtype name -> the dtype of its bytes.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


class SafetensorsError(ValueError):
    """A safetensors file that lemur refuses; the message says why."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise SafetensorsError(f"the header names {duplicate!r} more than once")
    return dict(pairs)


def read_header(path: str) -> tuple[dict[str, dict[str, object]], dict[str, str], int]:
    """(tensors, metadata, data start) of a safetensors file, all checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        head = stream.read(8)
        if len(head) != 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise SafetensorsError(
                f"{path}: declares a {length}-byte header in a {size}-byte file "
                f"(at most {MAX_HEADER_BYTES} bytes, inside the file)")
        raw = stream.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as exc:
        raise SafetensorsError(f"{path}: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must map names to strings")
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{path}: tensor {name!r} must have exactly dtype, shape, data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)):
            raise SafetensorsError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if not 0 <= begin <= end or end - begin != nbytes:
            raise SafetensorsError(
                f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} needs {nbytes} bytes, "
                f"but its data_offsets are {offsets}")
        if end > data_size:
            raise SafetensorsError(
                f"{path}: tensor {name!r} reaches byte {end} of a {data_size}-byte data buffer")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else "leaves a gap before it"
            raise SafetensorsError(f"{path}: tensor {name!r} (data_offsets [{begin}, {end}]) {problem}")
        position = end
    if position != data_size:
        raise SafetensorsError(
            f"{path}: the tensors cover {position} of the {data_size} data bytes; the file is not "
            "fully covered")
    return header, metadata, 8 + length


def read(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors of a safetensors file (checked first, see the module) and its
    metadata: float types as float32, integer types as int64, BOOL as bool."""
    path = os.fspath(path)
    header, metadata, start = read_header(path)
    tensors = {}
    with open(path, "rb") as stream:
        for name, entry in header.items():
            dtype = DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            raw = aligned_empty(max(1, math.prod(entry["shape"])), dtype)[: math.prod(entry["shape"])]
            stream.seek(start + begin)
            if stream.readinto(memoryview(raw.view(np.uint8))) != end - begin:
                raise SafetensorsError(f"{path}: tensor {name!r} is truncated")
            tensors[name] = _widened(raw, entry["dtype"]).reshape(entry["shape"])
    return tensors, metadata


def _widened(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F64"):
        return raw.astype(np.float32)
    if dtype in ("I32", "I16", "I8", "U8"):
        return raw.astype(np.int64)
    return raw


def write(path: str | os.PathLike[str], tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file as the safetensors library writes one: float32 (F32)
    and int64 (I64) tensors in name order with contiguous offsets, the header
    padded with spaces to a multiple of 8 bytes, no ``__metadata__``;
    atomically."""
    names = sorted(tensors)
    arrays = {}
    for name in names:
        array = np.asarray(tensors[name])
        if array.dtype.kind == "f":
            arrays[name] = c_order(array.astype("<f4", copy=False))
        elif array.dtype.kind in "iu":
            arrays[name] = c_order(array.astype("<i8", copy=False))
        else:
            raise TypeError(f"cannot write tensor {name!r} of dtype {array.dtype}")
    header, offset = {}, 0
    for name in names:
        array = arrays[name]
        header[name] = {"dtype": "F32" if array.dtype.kind == "f" else "I64",
                        "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def write_file(stream) -> None:
        stream.write(struct.pack("<Q", len(text)))
        stream.write(text)
        for name in names:
            stream.write(memoryview(arrays[name].reshape(-1).view(np.uint8)))

    write_atomically(path, write_file)
