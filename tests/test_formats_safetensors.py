"""lemur.formats.safetensors: a strict reader (hostile headers refused before any
declared size is used) and the safetensors library's layout on writing."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
from conftest import DATA

from lemur.formats import safetensors

TXTAI = DATA / "txtai"


def file_with(tmp_path, header: object, data: bytes = b"", *, raw_header: bytes | None = None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [("hostile_header.safetensors", "reaches byte 1638400000008 of a 16-byte data buffer"),
     ("hostile_overlap.safetensors", "overlaps the tensor before it")],
)
def test_the_hostile_fixtures_are_refused_without_allocating(name, message):
    tracemalloc.start()
    with pytest.raises(safetensors.SafetensorsError, match=message):
        safetensors.read(TXTAI / name)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20  # nothing of the 1.6 TB it declares


F32 = lambda shape, offsets: {"dtype": "F32", "shape": shape, "data_offsets": offsets}  # noqa: E731


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": F32([2], [0, 8])}, bytes(4), "reaches byte 8 of a 4-byte data buffer"),
        ({"a": F32([2], [0, 8])}, bytes(12), "cover 8 of the 12 data bytes; the file is not fully covered"),
        ({"a": F32([2], [0, 4])}, bytes(4), r"needs 8 bytes, but its data_offsets are \[0, 4\]"),
        ({"a": F32([1], [4, 8]), "b": F32([1], [0, 4])}, bytes(12), "cover 8 of the 12"),
        ({"a": F32([1], [0, 4]), "b": F32([1], [8, 12])}, bytes(12), "leaves a gap before it"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, bytes(4), "exactly dtype, shape, data_offsets"),
        ({"a": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, bytes(1), "unknown dtype 'Q8'"),
        ({"a": F32([-1], [0, 0])}, b"", "malformed shape"),
        ({"a": F32([1.5], [0, 4])}, bytes(4), "malformed shape"),
        ({"a": F32([1], [4, 0])}, bytes(4), "needs 4 bytes"),
        ({"a": F32([1], [0])}, bytes(4), "malformed data_offsets"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__ must map names to strings"),
        ([1, 2], b"", "must be a JSON object"),
    ],
)
def test_malformed_headers_are_refused(tmp_path, header, data, message):
    with pytest.raises(safetensors.SafetensorsError, match=message):
        safetensors.read(file_with(tmp_path, header, data))


def test_duplicate_names_and_non_json_are_refused(tmp_path):
    duplicate = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    with pytest.raises(safetensors.SafetensorsError, match="names 'a' more than once"):
        safetensors.read(file_with(tmp_path, None, bytes(4), raw_header=duplicate))
    with pytest.raises(safetensors.SafetensorsError, match="not JSON"):
        safetensors.read(file_with(tmp_path, None, raw_header=b"{nope"))
    with pytest.raises(safetensors.SafetensorsError, match="not JSON"):
        safetensors.read(file_with(tmp_path, None, raw_header=b"\xff\xfe"))


def test_header_lengths_beyond_the_file_or_the_limit_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    for length in (2**40, safetensors.MAX_HEADER_BYTES + 8):
        path.write_bytes(struct.pack("<Q", length) + b"{}")
        with pytest.raises(safetensors.SafetensorsError, match=f"declares a {length}-byte header"):
            safetensors.read(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(safetensors.SafetensorsError, match="too short"):
        safetensors.read(path)


def test_dtypes_are_widened_and_metadata_kept(tmp_path):
    values = np.array([1.5, -2.0, 3.25], np.float32)
    data = (values.astype("<f2").tobytes() + (values.view(np.uint32) >> 16).astype("<u2").tobytes()
            + np.array([7, -9], "<i4").tobytes())
    header = {"h": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]},
              "b": {"dtype": "BF16", "shape": [3], "data_offsets": [6, 12]},
              "i": {"dtype": "I32", "shape": [2], "data_offsets": [12, 20]},
              "__metadata__": {"format": "pt"}}
    tensors, metadata = safetensors.read(file_with(tmp_path, header, data))
    assert tensors["h"].dtype == tensors["b"].dtype == np.float32 and tensors["i"].dtype == np.int64
    assert tensors["h"].tolist() == tensors["b"].tolist() == values.tolist() and tensors["i"].tolist() == [7, -9]
    assert metadata == {"format": "pt"}


def test_writing_then_reading_round_trips(tmp_path):
    random = np.random.default_rng(0)
    tensors = {"z": random.standard_normal((3, 4)).astype(np.float32), "a": np.arange(5),
               "empty": np.zeros((0, 7), np.float32), "scalar": np.float32(2.5)}
    safetensors.write(tmp_path / "t.safetensors", tensors)
    raw = (tmp_path / "t.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0 and list(json.loads(raw[8 : 8 + length])) == sorted(tensors)
    again, metadata = safetensors.read(tmp_path / "t.safetensors")
    assert metadata == {} and sorted(again) == sorted(tensors)
    for name, value in tensors.items():
        assert np.array_equal(again[name], value) and again[name].shape == np.shape(value)
