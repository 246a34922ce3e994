"""lemur.npz: the fork's export format and lemur's own, and every defect."""

from __future__ import annotations

import os
import pathlib
import pickle
import sys

import numpy as np
import pytest
from conftest import DATA, FEATURE_TOLERANCE, golden, random_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lemur
from lemur import npz

FORK_VARIANTS = {
    "mlp1_gelu_d128_h2048": 1,
    "mlp2_relu_d96_h256": 2,
    "mlp1_silu_d100_h256": 1,
    "mlp1_mish_d64_h256": 1,
}
MARKER = pathlib.Path("/tmp/lemur_pwned")


def fork_arrays(variant: str = "mlp1_gelu_d128_h2048") -> dict[str, np.ndarray]:
    with np.load(DATA / variant / "model.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def write(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> pathlib.Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("variant", "num_layers"), sorted(FORK_VARIANTS.items()))
def test_fork_exports_load(variant, num_layers):
    contents = npz.load(DATA / variant / "model.npz")
    arrays, expected = fork_arrays(variant), golden(variant)
    assert contents.file_format == "lemur-numpy"
    assert contents.model.num_layers == num_layers
    assert contents.model.activation == "gelu"  # the default: the export records none
    assert contents.model.output_mean == pytest.approx(float(expected["output_mean"]))
    assert contents.model.output_std == pytest.approx(float(expected["output_std"]))
    assert np.array_equal(contents.W, arrays["W"])
    for index, layer in enumerate(contents.model.layers):
        assert np.array_equal(layer.weight, arrays[f"layer_{index}_weight"])
        assert np.array_equal(layer.ln_bias, arrays[f"layer_{index}_ln_bias"])


def test_hand_written_single_layer_export_loads(tmp_path):
    # the variant the fork's README shows: layer_0_*, W and final_hidden_dim only
    arrays = fork_arrays()
    keys = ["layer_0_weight", "layer_0_bias", "layer_0_ln_weight", "layer_0_ln_bias", "W", "final_hidden_dim"]
    path = write(tmp_path / "hand.npz", {key: arrays[key] for key in keys})
    contents = npz.load(path)
    assert (contents.model.num_layers, contents.model.feature_dim) == (1, 2048)
    assert (contents.model.output_mean, contents.model.output_std) == (0.0, 1.0)
    expected = golden("mlp1_gelu_d128_h2048")
    np.testing.assert_allclose(
        contents.model.features(expected["query_tokens"], expected["query_counts"]),
        expected["features_ragged"],
        **FEATURE_TOLERANCE,
    )


def test_activation_of_fork_exports_is_explicit():
    assert npz.load(DATA / "mlp2_relu_d96_h256" / "model.npz", activation="relu").model.activation == "relu"
    assert npz.load(DATA / "mlp2_relu_d96_h256" / "model.npz", default_activation="silu").model.activation == "silu"
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        npz.load(DATA / "mlp2_relu_d96_h256" / "model.npz", activation="swish")


@pytest.mark.parametrize("kind", ["mlp", "elm"])
def test_lemur_format_round_trips_bit_exactly(tmp_path, kind):
    model = random_model(kind, "mish", dims=(12, 20) if kind == "elm" else (12, 16, 20))
    model = lemur.Model(model.layers, kind=kind, activation="mish", output_mean=0.25, output_std=1.5)
    W = np.random.default_rng(0).standard_normal((7, 20)).astype(np.float32)
    npz.save(tmp_path / "m.npz", model=model, W=W)
    contents = npz.load(tmp_path / "m.npz")
    assert contents.file_format == "lemur"
    again = contents.model
    assert (again.kind, again.activation, again.num_layers) == (kind, "mish", model.num_layers)
    assert (again.output_mean, again.output_std) == (0.25, 1.5)
    for ours, theirs in zip(model.layers, again.layers):
        for a, b in zip(ours, theirs):
            assert (a is None and b is None) or np.array_equal(a, b)
    assert np.array_equal(contents.W, W)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as archive:
        assert str(archive["lemur_format"]) == "lemur-retrieval"
        assert int(archive["format_version"]) == 1


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

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        random_model("mlp", "relu").save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


# -- defects ------------------------------------------------------------------------


def without(arrays, *keys):
    return {key: value for key, value in arrays.items() if key not in keys}


def replaced(arrays, **changes):
    return {**arrays, **changes}


FORK = fork_arrays()
FORK2 = fork_arrays("mlp2_relu_d96_h256")


@pytest.mark.parametrize(
    ("arrays", "error", "message"),
    [
        (without(FORK, "layer_0_bias"), ValueError, "missing key 'layer_0_bias'"),
        (without(FORK2, "layer_1_weight"), ValueError, "missing key 'layer_1_weight'"),
        (replaced(FORK, num_layers=np.int64(2)), ValueError, "missing key 'layer_1_weight'"),
        (replaced(FORK2, num_layers=np.int64(1)), ValueError, "num_layers is 1, but the file also has 'layer_1_weight'"),
        (replaced(FORK, num_layers=np.int64(0)), ValueError, "num_layers must be >= 1, got 0"),
        (replaced(FORK, num_layers=np.float64(1)), ValueError, "key 'num_layers' must be a single integer"),
        (replaced(FORK, final_hidden_dim=np.int64(512)), ValueError, "final_hidden_dim is 512, but layer_0_weight outputs 2048 features"),
        (replaced(FORK, W=FORK["W"][:, :100]), ValueError, r"W has shape \(300, 100\), but the model's last layer outputs 2048 features"),
        (replaced(FORK2, layer_1_weight=FORK2["layer_1_weight"][:, :64]), ValueError, "its input dimension 64 does not match the output dimension 128 of layer_0_weight"),
        (replaced(FORK, layer_0_bias=FORK["layer_0_bias"][:5]), ValueError, r"layer_0_bias must have shape \(2048,\)"),
        (replaced(FORK, layer_0_weight=FORK["layer_0_weight"].astype(np.int32)), ValueError, "key 'layer_0_weight' must hold floating-point values, got dtype int32"),
        (replaced(FORK, layer_0_weight=np.array("weights")), ValueError, "key 'layer_0_weight' must hold floating-point values"),
        (replaced(FORK, layer_0_ln_weight=FORK["layer_0_ln_weight"][None]), ValueError, r"key 'layer_0_ln_weight' must be 1-D, got shape \(1, 2048\)"),
        (replaced(FORK, W=np.where(np.arange(2048) == 7, np.nan, FORK["W"]).astype(np.float32)), ValueError, r"W contains NaN or infinite values at index \(0,\)"),
        (replaced(FORK, layer_0_weight=np.full((2048, 128), np.inf, np.float32)), ValueError, "layer_0_weight contains NaN or infinite values"),
        (replaced(FORK, output_std=np.float64(-1.0)), ValueError, "output_std must be > 0"),
        (replaced(FORK, output_mean=np.array([1.0, 2.0])), ValueError, "key 'output_mean' must be a single real number"),
        ({"something": np.zeros(3)}, ValueError, "neither a lemur file .no 'lemur_format' key. nor a LEMUR-NumPy export"),
        (replaced(FORK, W=np.array([[1.0], "x"], dtype=object)), ValueError, "key 'W' holds a Python object array; lemur never unpickles"),
    ],
)
def test_defective_fork_exports_are_refused(tmp_path, arrays, error, message):
    path = write(tmp_path / "bad.npz", arrays)
    with pytest.raises(error, match=message) as info:
        npz.load(path)
    assert str(path) in str(info.value)


def saved_lemur(tmp_path) -> dict[str, np.ndarray]:
    npz.save(tmp_path / "ok.npz", model=random_model("mlp", "gelu", dims=(6, 8)), W=np.ones((2, 8), np.float32))
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(lemur_format=np.array("something-else")), "lemur_format is 'something-else', expected 'lemur-retrieval'"),
        (dict(format_version=np.int64(2)), "written in format version 2 by a newer lemur; this lemur reads versions up to 1"),
        (dict(format_version=np.int64(0)), "format_version must be >= 1"),
        (dict(model_kind=np.array("rnn")), "model_kind must be 'mlp' or 'elm', got 'rnn'"),
        (dict(activation=np.array("tanh")), "key 'activation': unknown activation 'tanh'"),
        (dict(activation=np.int64(3)), "key 'activation' must be a single string"),
        (dict(output_std=None), "missing key 'output_std'"),
    ],
)
def test_defective_lemur_files_are_refused(tmp_path, change, message):
    arrays = saved_lemur(tmp_path)
    arrays = {key: value for key, value in {**arrays, **change}.items() if value is not None}
    path = write(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError, match=message):
        npz.load(path)


def test_object_arrays_are_never_unpickled():
    MARKER.unlink(missing_ok=True)
    path = DATA / "hostile" / "object_array.npz"
    with pytest.raises(ValueError, match="key 'W' holds a Python object array; lemur never unpickles"):
        npz.load(path)
    with pytest.raises(ValueError, match="holds a Python object array"):
        lemur.Model.load(path)
    assert not MARKER.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a zip archive at all", "not a readable .npz archive"),
        (b"PK\x03\x04" + b"\x00" * 40, "not a readable .npz archive"),
        (pickle.dumps({"layer_0_weight": 1}), "not a readable .npz archive"),
    ],
)
def test_files_that_are_not_npz_are_refused(tmp_path, content, message):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        npz.load(path)


def test_a_single_npy_is_refused(tmp_path):
    np.save(tmp_path / "W.npy", np.zeros(3))
    with pytest.raises(ValueError, match="expected an .npz archive, found a single .npy array"):
        npz.load(tmp_path / "W.npy")


def test_truncated_archive_is_refused(tmp_path):
    data = (DATA / "mlp1_mish_d64_h256" / "model.npz").read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        npz.load(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        npz.load("/nonexistent/model.npz")


NPZ_SOURCE = (DATA / "mlp1_mish_d64_h256" / "model.npz").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, len(NPZ_SOURCE)),
    flips=st.lists(st.tuples(st.integers(0, len(NPZ_SOURCE) - 1), st.integers(0, 7)), max_size=8),
)
def test_fuzz_damaged_files_raise_our_errors(tmp_path, cut, flips):
    data = bytearray(NPZ_SOURCE[:cut])
    for position, bit in flips:
        if position < len(data):
            data[position] ^= 1 << bit
    path = tmp_path / "model.npz"
    path.write_bytes(bytes(data))
    try:
        model = npz.load(path, activation="mish").model
    except (ValueError, TypeError):
        return
    assert model.num_layers == 1
