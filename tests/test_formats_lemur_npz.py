"""lemur.formats.lemur_npz: lemur's own format, its versions, and every defect."""

from __future__ import annotations

import os
import pathlib
import pickle
import sys
import zipfile

import numpy as np
import pytest
from conftest import random_model

import lemur
from lemur import formats
from lemur.formats import archive, lemur_npz


def write(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> pathlib.Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("kind", ["mlp", "elm"])
def test_lemur_format_round_trips_bit_exactly(tmp_path, kind):
    model = random_model(kind, "mish", dims=(12, 20) if kind == "elm" else (12, 16, 20))
    center = np.random.default_rng(1).standard_normal(12).astype(np.float32)
    model = lemur.Model(model.layers, kind=kind, activation="mish", output_mean=0.25, output_std=1.5,
                        center=center, query_scale=8.5)
    W = np.random.default_rng(0).standard_normal((7, 20)).astype(np.float32)
    lemur.Index(model, W).save(tmp_path / "m.npz")
    record = formats.read(tmp_path / "m.npz")
    again = lemur.load(tmp_path / "m.npz").model
    assert record.file_format == "lemur"
    assert (again.kind, again.activation, again.num_layers) == (kind, "mish", model.num_layers)
    assert (again.output_mean, again.output_std, again.query_scale) == (0.25, 1.5, 8.5)
    assert np.array_equal(again.center, center)
    for ours, theirs in zip(model.layers, again.layers):
        for a, b in zip(ours, theirs):
            assert (a is None and b is None) or np.array_equal(a, b)
    assert np.array_equal(record.W, W)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as arrays:
        assert str(arrays["lemur_format"]) == "lemur-retrieval"
        assert int(arrays["format_version"]) == lemur_npz.FORMAT_VERSION == 2


def test_every_array_starts_on_a_64_byte_boundary(tmp_path):
    index = lemur.Index(random_model("mlp", "gelu"), np.ones((5, 40), np.float32),
                        np.ones((9, 24), np.float32), [1, 2, 3, 2, 1],
                        sample=np.ones((4, 24), np.float32))
    index.save(tmp_path / "i.npz")
    with archive.Archive(tmp_path / "i.npz") as opened:
        for name in opened.names:
            member = opened.npy_header(name)
            offset = opened.data_offset(opened.info(name)) + member.header_bytes
            assert offset % archive.DATA_ALIGNMENT == 0, name
            assert opened.info(name).compress_type == zipfile.ZIP_STORED


def test_version_1_files_still_load(tmp_path):
    # what lemur 0.1 wrote: no query_scale (32), no centre
    model = random_model("mlp", "silu")
    arrays = {"lemur_format": np.array("lemur-retrieval"), "format_version": np.array(1),
              "model_kind": np.array("mlp"), "activation": np.array("silu"), "num_layers": np.array(1),
              "output_mean": np.array(0.5), "output_std": np.array(2.0),
              **{f"layer_0_{field}": value for field, value in model.layers[0]._asdict().items()},
              "W": np.ones((3, 40), np.float32)}
    loaded = lemur.load(write(tmp_path / "v1.npz", arrays))
    assert (loaded.model.query_scale, loaded.model.center, loaded.num_docs) == (32.0, None, 3)
    tokens = np.ones((3, 24), np.float32)
    assert np.array_equal(loaded.model.features(tokens, [3]), model.features(tokens, [3]))


def test_model_save_and_load(tmp_path):
    model = random_model("mlp", "silu")
    model.save(tmp_path / "model.npz")
    again = lemur.Model.load(tmp_path / "model.npz")
    tokens = np.ones((3, 24), np.float32)
    assert np.array_equal(again.features(tokens, [3]), model.features(tokens, [3]))
    with pytest.raises(ValueError, match="records activation 'silu'; activation='gelu' contradicts it"):
        lemur.Model.load(tmp_path / "model.npz", activation="gelu")
    assert lemur.Model.load(tmp_path / "model.npz", activation="silu").activation == "silu"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_saved_files_have_normal_permissions(tmp_path):
    path = tmp_path / "model.npz"
    random_model("mlp", "gelu").save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    random_model("mlp", "gelu").save(path)
    before = path.read_bytes()

    def broken_chunks(array):
        yield memoryview(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(archive, "_array_chunks", broken_chunks)
    with pytest.raises(OSError, match="disk full"):
        random_model("mlp", "relu").save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


def saved_lemur(tmp_path) -> dict[str, np.ndarray]:
    lemur.Index(random_model("mlp", "gelu", dims=(6, 8)), np.ones((2, 8), np.float32)).save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(lemur_format=np.array("something-else")), "lemur_format is 'something-else', expected 'lemur-retrieval'"),
        (dict(format_version=np.int64(3)), "written in format version 3 by a newer lemur; this lemur reads versions up to 2"),
        (dict(format_version=np.int64(0)), "format_version must be >= 1"),
        (dict(model_kind=np.array("rnn")), "model_kind must be 'mlp' or 'elm', got 'rnn'"),
        (dict(activation=np.array("tanh")), "key 'activation': unknown activation 'tanh'"),
        (dict(activation=np.int64(3)), "key 'activation' must be a single string"),
        (dict(output_std=None), "missing key 'output_std'"),
        (dict(query_scale=np.float64(0)), "query_scale must be > 0"),
        (dict(center=np.ones(5, np.float32)), r"key 'center' must have shape \(6\)"),
        (dict(doc_counts=np.array([1, 1])), "missing key 'doc_tokens'"),
        (dict(doc_ids=np.array([1])), r"key 'doc_ids' must have shape \(2\)"),
        (dict(sample=np.ones((3, 5), np.float32)), r"key 'sample' must have shape \(any, 6\)"),
    ],
)
def test_defective_lemur_files_are_refused(tmp_path, change, message):
    arrays = saved_lemur(tmp_path)
    arrays = {key: value for key, value in {**arrays, **change}.items() if value is not None}
    path = write(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError, match=message):
        lemur.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a zip archive at all", "not a file lemur reads"),
        (b"PK\x03\x04" + b"\x00" * 40, "not a file lemur reads"),
        (pickle.dumps({"layer_0_weight": 1}), "not a file lemur reads"),
    ],
)
def test_files_that_are_not_npz_are_refused(tmp_path, content, message):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        lemur.load(path)


def test_a_single_npy_is_refused(tmp_path):
    np.save(tmp_path / "W.npy", np.zeros(3))
    with pytest.raises(ValueError, match="a single .npy array, not a model or index file"):
        lemur.load(tmp_path / "W.npy")


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        lemur.load("/nonexistent/model.npz")


