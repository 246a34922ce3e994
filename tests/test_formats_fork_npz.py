"""lemur.formats.fork_npz: the Numba fork's exports, and every defect."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from conftest import DATA, FEATURE_TOLERANCE, golden
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lemur
from lemur import formats

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
    record = formats.read(DATA / variant / "model.npz")
    index = lemur.load(DATA / variant / "model.npz")
    arrays, expected = fork_arrays(variant), golden(variant)
    assert record.file_format == "lemur-numpy" and record.activation is None
    assert index.model.num_layers == num_layers
    assert index.model.activation == "gelu"  # the default: the export records none
    assert index.model.output_mean == pytest.approx(float(expected["output_mean"]))
    assert index.model.output_std == pytest.approx(float(expected["output_std"]))
    assert np.array_equal(index.W, arrays["W"])
    for position, layer in enumerate(index.model.layers):
        assert np.array_equal(layer.weight, arrays[f"layer_{position}_weight"])
        assert np.array_equal(layer.ln_bias, arrays[f"layer_{position}_ln_bias"])


def test_hand_written_single_layer_export_loads(tmp_path):
    # the variant the fork's README shows: layer_0_*, W and final_hidden_dim only
    arrays = fork_arrays()
    keys = ["layer_0_weight", "layer_0_bias", "layer_0_ln_weight", "layer_0_ln_bias", "W", "final_hidden_dim"]
    path = write(tmp_path / "hand.npz", {key: arrays[key] for key in keys})
    model = lemur.Model.load(path)
    assert (model.num_layers, model.feature_dim) == (1, 2048)
    assert (model.output_mean, model.output_std) == (0.0, 1.0)
    expected = golden("mlp1_gelu_d128_h2048")
    np.testing.assert_allclose(
        model.features(expected["query_tokens"], expected["query_counts"]),
        expected["features_ragged"],
        **FEATURE_TOLERANCE,
    )


def test_activation_of_fork_exports_is_explicit():
    path = DATA / "mlp2_relu_d96_h256" / "model.npz"
    assert lemur.Model.load(path, activation="relu").activation == "relu"
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        lemur.Model.load(path, activation="swish")


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
        lemur.load(path)
    assert str(path) in str(info.value)


def test_object_arrays_are_never_unpickled():
    MARKER.unlink(missing_ok=True)
    path = DATA / "hostile" / "object_array.npz"
    with pytest.raises(ValueError, match="key 'W' holds a Python object array; lemur never unpickles"):
        formats.read(path)
    with pytest.raises(ValueError, match="holds a Python object array"):
        lemur.Model.load(path)
    assert not MARKER.exists()


def test_truncated_archive_is_refused(tmp_path):
    data = (DATA / "mlp1_mish_d64_h256" / "model.npz").read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        lemur.load(path)


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
        model = lemur.Model.load(path, activation="mish")
    except (ValueError, TypeError):
        return
    assert model.num_layers == 1
