"""lemur.formats.original: the original's index directories and mlp.pt, read without torch
and without running code from them, and written for torch and the original."""

from __future__ import annotations

import pathlib
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from conftest import DATA, FEATURE_TOLERANCE, VARIANTS, golden
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_files import Call, Tensor, archive, pickled

import lemur
from lemur import formats
from lemur.formats import torch_archive

MARKER = pathlib.Path("/tmp/lemur_pwned")
HOSTILE = DATA / "hostile" / "mlp.pt"


def write(tmp_path, data: bytes, name="file.pt") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def floats(*values) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


# -- the fixtures' index directories --------------------------------------------------------


def test_directories_load_to_exactly_what_torch_loads(variant):
    torch = pytest.importorskip("torch")
    index = lemur.load(DATA / variant)
    payload = torch.load(DATA / variant / "mlp.pt", weights_only=True)
    W = torch.load(DATA / variant / "w.pt", weights_only=True)["W"]
    assert np.array_equal(index.W, W.numpy()) and index.W.dtype == np.float32
    state, model = payload["state_dict"], index.model
    assert model.output_mean == payload["output_mean"] and model.output_std == payload["output_std"]
    assert model.activation == payload["config"]["activation"]
    if model.kind == "elm":
        assert np.array_equal(model.layers[0].weight, state["feature_extractor.0.weight"].numpy().T)
        return
    for i, layer in enumerate(model.layers):
        for array, key in zip(layer, (f"{3 * i}.weight", f"{3 * i}.bias", f"{3 * i + 1}.weight", f"{3 * i + 1}.bias")):
            assert np.array_equal(array, state["feature_extractor." + key].numpy())


@pytest.mark.parametrize("variant", [v for v in VARIANTS if VARIANTS[v][0] == "model.npz"])
def test_directories_load_to_the_forks_export(variant):
    assert formats.read(DATA / variant).file_format == "lemur-original (directory)"
    from_directory = lemur.load(DATA / variant)
    from_export = lemur.load(DATA / variant / "model.npz", activation=from_directory.model.activation)
    assert np.array_equal(from_directory.W, from_export.W)
    for ours, theirs in zip(from_directory.model.layers, from_export.model.layers):
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    expected = golden(variant)
    features = from_directory.features(expected["query_tokens"], expected["query_counts"])
    assert np.array_equal(features, from_export.features(expected["query_tokens"], expected["query_counts"]))
    assert np.array_equal(from_directory.top_k(features, 50)[0], from_export.top_k(features, 50)[0])


def test_directories_reproduce_the_originals_outputs_without_torch(variant):
    index = lemur.Index.load(DATA / variant)
    expected = golden(variant)
    features = index.features(expected["query_tokens"], expected["query_counts"])
    np.testing.assert_allclose(features, expected["features_ragged"], **FEATURE_TOLERANCE)
    real = np.arange(41) != int(expected["zero_query_index"])
    assert np.array_equal(index.top_k(features, 50)[0][real], expected["topk50_indices"][real])
    with np.load(DATA / "corpus.npz") as corpus:
        with_docs = lemur.Index(index.model, index.W, corpus[str(expected["corpus_key"])], corpus["doc_counts"])
    reranked, _ = with_docs.rerank(expected["query_tokens"], expected["query_counts"], expected["candidates"])
    assert np.array_equal(reranked, expected["rerank_top10"])


def test_a_lone_mlp_pt_is_a_model_and_a_model_directory_has_no_W(tmp_path):
    model = lemur.load(DATA / "mlp1_mish_d64_h256" / "mlp.pt")
    assert isinstance(model, lemur.Model) and model.activation == "mish"
    (tmp_path / "only_model").mkdir()
    (tmp_path / "only_model" / "mlp.pt").write_bytes((DATA / "mlp1_mish_d64_h256" / "mlp.pt").read_bytes())
    assert isinstance(lemur.load(tmp_path / "only_model"), lemur.Model)
    with pytest.raises(ValueError, match="holds a model but no W"):
        lemur.Index.load(tmp_path / "only_model")


def test_convert_keeps_what_the_forks_exporter_drops(tmp_path):
    index = lemur.load(DATA / "elm_gelu_d128_h512")
    index.save(tmp_path / "elm.npz")
    again = lemur.load(tmp_path / "elm.npz")
    assert (again.model.kind, again.model.activation) == ("elm", "gelu")
    assert np.array_equal(again.model.layers[0].weight, index.model.layers[0].weight)


# -- hostile and malformed files ------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [lemur.load, lemur.Model.load, lemur.Index.load, torch_archive.load,
     lambda path: formats.read(path.parent)],
)
def test_hostile_pickle_is_refused_without_running(load):
    MARKER.unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"refusing to load it: its pickle names the global 'posix\.system'"):
        load(HOSTILE)
    assert not MARKER.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "expected the dict that LEMUR's save_mlp writes"),
        ({"config": {}}, "missing key 'state_dict'"),
        ({"state_dict": {}, "config": {"model_type": "rnn"}}, "config\\['model_type'\\] must be 'mlp' or 'elm'"),
        ({"state_dict": {}, "config": {"model_type": "mlp", "activation": "tanh"}}, "unknown activation 'tanh'"),
        ({"state_dict": {}, "config": {"model_type": "mlp", "activation": "gelu", "num_layers": 1}}, "state_dict is missing 'feature_extractor.0.weight'"),
        ({"state_dict": {}, "config": {"model_type": "mlp", "activation": "gelu", "num_layers": 0}}, "config\\['num_layers'\\] must be a positive int"),
        ({"state_dict": {"feature_extractor.0.weight": 3}, "config": {"model_type": "elm", "activation": "gelu"}}, "is not a tensor"),
    ],
)
def test_malformed_checkpoints_are_refused(tmp_path, payload, message):
    with pytest.raises(ValueError, match=message):
        lemur.load(write(tmp_path, archive(payload, {}), "mlp.pt"))


def test_checkpoint_with_the_wrong_dims_is_refused(tmp_path):
    payload = {
        "state_dict": OrderedDict({"feature_extractor.0.weight": Tensor("0", 6, 0, (3, 2), (2, 1))}),
        "config": {"model_type": "elm", "activation": "gelu", "input_dim": 4, "final_hidden_dim": 2},
    }
    with pytest.raises(ValueError, match=r"config\['input_dim'\] is 4, but the weights give 3"):
        lemur.load(write(tmp_path, archive(payload, {"0": floats(*range(6))}), "mlp.pt"))


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        lemur.load(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="a directory that is neither an original LEMUR index .no mlp.pt."):
        lemur.load(tmp_path)


# -- fuzzing ------------------------------------------------------------------------------------

FUZZ_SOURCE = (DATA / "mlp1_mish_d64_h256" / "mlp.pt").read_bytes()
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_or_refuse(path) -> None:
    """Our errors, or a sound result; never another exception."""
    try:
        result = lemur.load(path)
    except (ValueError, TypeError):
        return
    assert isinstance(result, lemur.Model)


@FUZZ_SETTINGS
@given(cut=st.integers(0, len(FUZZ_SOURCE) - 1))
def test_fuzz_truncated_archives(tmp_path, cut):
    load_or_refuse(write(tmp_path, FUZZ_SOURCE[:cut], "mlp.pt"))


@FUZZ_SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, len(FUZZ_SOURCE) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_fuzz_bit_flipped_archives(tmp_path, flips):
    data = bytearray(FUZZ_SOURCE)
    for position, bit in flips:
        data[position] ^= 1 << bit
    load_or_refuse(write(tmp_path, bytes(data), "mlp.pt"))


