"""lemur.formats.torch_archive: torch.save files read without torch and without running
code from them, and written for torch.load(weights_only=True)."""

from __future__ import annotations

import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from conftest import DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_files import MARKER, Call, Tensor, archive, pickled, write

import lemur
from lemur import formats
from lemur.formats import torch_archive


def test_raw_reader_matches_torch_for_every_tensor(variant):
    torch = pytest.importorskip("torch")
    ours = torch_archive.load(DATA / variant / "mlp.pt")
    theirs = torch.load(DATA / variant / "mlp.pt", weights_only=True)
    assert ours["config"] == theirs["config"]
    assert list(ours["state_dict"]) == list(theirs["state_dict"])
    for key, tensor in theirs["state_dict"].items():
        assert np.array_equal(ours["state_dict"][key], tensor.numpy())


# -- hostile files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("os", "system"), ("subprocess", "Popen"), ("torch", "load"),
     ("numpy.core.multiarray", "_reconstruct"), ("torch._utils", "_rebuild_qtensor"),
     ("collections", "defaultdict"), ("torch", "DoubleStorage")],
)
def test_every_other_global_is_refused(tmp_path, module, name):
    path = write(tmp_path, archive({"state_dict": {}, "x": Call(module, name, ("touch /tmp/lemur_pwned",))}, {}))
    MARKER.unlink(missing_ok=True)
    with pytest.raises(ValueError, match=f"names the global '{module}.{name}'"):
        torch_archive.load(path)
    assert not MARKER.exists()


# -- crafted and broken archives ---------------------------------------------------------------


def floats(*values) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


def test_views_of_storages(tmp_path):
    data = floats(*range(12))
    value = {
        "matrix": Tensor("0", 12, 0, (3, 4), (4, 1)),
        "transposed": Tensor("0", 12, 0, (4, 3), (1, 4)),
        "offset": Tensor("0", 12, 5, (2, 3), (3, 1)),
        "broadcast": Tensor("0", 12, 2, (2, 3), (0, 1)),
        "empty": Tensor("0", 12, 0, (0, 5), (5, 1)),
        "scalar": Tensor("0", 12, 7, (), ()),
    }
    loaded = torch_archive.load(write(tmp_path, archive(value, {"0": data})))
    base = np.arange(12, dtype=np.float32)
    assert np.array_equal(loaded["matrix"], base.reshape(3, 4))
    assert np.array_equal(loaded["transposed"], base.reshape(3, 4).T)
    assert np.array_equal(loaded["offset"], base[5:11].reshape(2, 3))
    assert np.array_equal(loaded["broadcast"], np.tile(base[2:5], (2, 1)))
    assert loaded["empty"].shape == (0, 5) and float(loaded["scalar"]) == 7.0


def test_storage_dtypes(tmp_path):
    half = np.array([1.5, -2.0], dtype="<f2").tobytes()
    bfloat16 = (np.array([1.5, -2.0, 3.25], dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    longs = np.array([7, -(2**40)], dtype="<i8").tobytes()
    value = {"h": Tensor("0", 2, 0, (2,), (1,), "HalfStorage"),
             "b": Tensor("1", 3, 0, (3,), (1,), "BFloat16Storage"),
             "l": Tensor("2", 2, 0, (2,), (1,), "LongStorage")}
    loaded = torch_archive.load(write(tmp_path, archive(value, {"0": half, "1": bfloat16, "2": longs})))
    assert loaded["h"].dtype == np.float16 and loaded["h"].tolist() == [1.5, -2.0]
    assert loaded["b"].dtype == np.float32 and loaded["b"].tolist() == [1.5, -2.0, 3.25]
    assert loaded["l"].dtype == np.int64 and loaded["l"].tolist() == [7, -(2**40)]


def test_a_compressed_storage_is_refused_before_it_is_inflated(tmp_path):
    # torch.save stores storages uncompressed; a deflated one could inflate a
    # few-kB file into gigabytes, so it is refused by its entry alone
    numel = 2**28  # 1 GiB of zeros, about 1 MB deflated
    path = tmp_path / "file.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zip_file:
        zip_file.writestr("archive/data.pkl", pickled({"W": Tensor("0", numel, 0, (numel,), (1,))}))
        with zip_file.open("archive/data/0", "w", force_zip64=True) as member:
            zeros = bytes(2**24)
            for _ in range(numel * 4 // len(zeros)):
                member.write(zeros)
    with pytest.raises(ValueError, match="storage 0 is compressed; torch.save stores storages uncompressed"):
        torch_archive.load(path)


@pytest.mark.parametrize(
    ("value", "storages", "message"),
    [
        ({"W": Tensor("0", 4, 0, (2, 3), (3, 1))}, {"0": floats(1, 2, 3, 4)}, "reaches element 5, past the end of its storage '0'"),
        ({"W": Tensor("0", 4, 2, (3,), (1,))}, {"0": floats(1, 2, 3, 4)}, "past the end of its storage"),
        ({"W": Tensor("0", 4, 0, (2,), (9,))}, {"0": floats(1, 2, 3, 4)}, "past the end"),
        ({"W": Tensor("0", 5, 0, (5,), (1,))}, {"0": floats(1, 2, 3, 4)}, "storage 0 should hold 5 elements .20 bytes., but its member has 16 bytes"),
        ({"W": Tensor("0", 4, 0, (4,), (1,))}, {}, "missing member 'archive/data/0'"),
        ({"W": Tensor("../../etc/passwd", 4, 0, (4,), (1,))}, {}, "a storage key must be digits"),
        ({"W": Tensor("0", 4, 0, (2, 2), (2,))}, {"0": floats(1, 2, 3, 4)}, r"has size \(2, 2\) but stride \(2,\)"),
        ({"W": Tensor("0", 4, -1, (2,), (1,))}, {"0": floats(1, 2, 3, 4)}, "storage offset -1"),
        ({"W": Tensor("0", 4, 0, (-2,), (1,))}, {"0": floats(1, 2, 3, 4)}, "size must be a tuple of non-negative ints"),
        ({"W": Tensor("0", 4, 0, (2,), (1,), "IntStorage")}, {"0": floats(1, 2, 3, 4)}, "names the global 'torch.IntStorage'"),
        ({"W": Call("torch._utils", "_rebuild_tensor_v2", (1, 0, (1,), (1,)))}, {}, "refers to something that is not a storage"),
        ({"W": Call("collections", "OrderedDict", (1, 2, 3, 4))}, {}, "not a valid pickle"),
    ],
)
def test_broken_archives_are_refused(tmp_path, value, storages, message):
    with pytest.raises(ValueError, match=message):
        torch_archive.load(write(tmp_path, archive(value, storages)))


def test_big_endian_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="only little-endian files are supported"):
        torch_archive.load(write(tmp_path, archive({}, {}, byteorder=b"big")))


def test_legacy_and_non_zip_files_are_refused(tmp_path):
    legacy = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."
    for data in (legacy, b"", b"garbage"):
        with pytest.raises(ValueError, match="not a readable zip archive .*legacy format"):
            torch_archive.load(write(tmp_path, data))
    with pytest.raises(ValueError, match=r"a legacy \(pre-1.6\) torch.save file; re-save it"):
        lemur.load(write(tmp_path, legacy, "old.pt"))


def test_archives_without_one_data_pkl_are_refused(tmp_path):
    path = tmp_path / "two.pt"
    with zipfile.ZipFile(path, "w") as zip_file:
        zip_file.writestr("a/data.pkl", b"\x80\x02}.")
        zip_file.writestr("b/data.pkl", b"\x80\x02}.")
    with pytest.raises(ValueError, match="expected one <archive>/data.pkl member"):
        torch_archive.load(path)


FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ_SETTINGS
@given(
    numel=st.integers(0, 40),
    offset=st.integers(0, 50),
    size=st.lists(st.integers(0, 7), min_size=0, max_size=3),
    stride=st.lists(st.integers(0, 12), min_size=0, max_size=3),
    stored=st.integers(0, 40),
)
def test_fuzz_storage_records(tmp_path, numel, offset, size, stride, stored):
    data = np.arange(stored, dtype="<f4")
    value = {"W": Tensor("0", numel, offset, tuple(size), tuple(stride))}
    path = write(tmp_path, archive(value, {"0": data.tobytes()}))
    try:
        loaded = torch_archive.load(path)["W"]
    except ValueError:
        return
    # it loaded: then the record was consistent, and the view is the right one
    assert stored == numel and len(size) == len(stride)
    expected = np.lib.stride_tricks.as_strided(
        data[offset:] if all(size) else data[:0], shape=tuple(size), strides=tuple(4 * s for s in stride)
    )
    assert np.array_equal(loaded, expected)


# -- writing ---------------------------------------------------------------------------------------


def test_written_files_read_back_exactly(tmp_path):
    random = np.random.default_rng(0)
    value = {"state_dict": OrderedDict(a=random.standard_normal((3, 5)).astype(np.float32),
                                       b=np.arange(4, dtype=np.int64), c=np.ones(2, np.float16)),
             "config": {"n": 3, "big": 2**40, "name": "x", "flag": True, "none": None, "list": [1, 2.5]},
             "pair": (1, "two")}
    torch_archive.write(tmp_path / "f.pt", value)
    loaded = torch_archive.load(tmp_path / "f.pt")
    assert loaded["config"] == value["config"] and loaded["pair"] == value["pair"]
    assert isinstance(loaded["state_dict"], OrderedDict) and list(loaded["state_dict"]) == ["a", "b", "c"]
    for key, array in value["state_dict"].items():
        assert loaded["state_dict"][key].dtype == array.dtype and np.array_equal(loaded["state_dict"][key], array)


def test_written_files_are_what_torch_loads_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    W = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    torch_archive.write(tmp_path / "w.pt", {"W": W, "state": OrderedDict(x=np.arange(3))})
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    assert np.array_equal(loaded["W"].numpy(), W) and loaded["state"]["x"].tolist() == [0, 1, 2]
    assert torch.load(tmp_path / "w.pt", weights_only=True, mmap=True)["W"].shape == (4, 6)


def test_storages_are_stored_uncompressed_on_64_byte_boundaries(tmp_path):
    torch_archive.write(tmp_path / "w.pt", {"a": np.ones(7, np.float32), "b": np.ones(3, np.int64)})
    with formats.archive.Archive(tmp_path / "w.pt") as opened:
        for name in opened.names:
            info = opened.info(name)
            assert info.compress_type == zipfile.ZIP_STORED
            if "/data/" in name:
                assert opened.data_offset(info) % 64 == 0


def test_values_torch_save_would_not_write_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot write a set"):
        torch_archive.write(tmp_path / "x.pt", {"s": {1, 2}})
    with pytest.raises(TypeError, match="cannot write a complex64 tensor"):
        torch_archive.write(tmp_path / "x.pt", {"c": np.ones(2, np.complex64)})
    assert not (tmp_path / "x.pt").exists()
