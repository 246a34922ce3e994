"""lemur.formats.original: the original's index directories and mlp.pt, read without torch
and without running code from them, and written for torch and the original."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from conftest import DATA, FEATURE_TOLERANCE, VARIANTS, golden
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_files import HOSTILE, MARKER, Tensor, archive, write

import lemur
from lemur import formats
from lemur.formats import torch_archive


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




# -- writing ---------------------------------------------------------------------------------------


def test_writing_a_fixture_directory_back_reads_the_same(tmp_path, variant):
    index = lemur.load(DATA / variant)
    note = lemur.save(index, tmp_path / "again", format="original")
    assert note.startswith("an original index directory (mlp.pt, w.pt)")
    again = lemur.load(tmp_path / "again")
    assert np.array_equal(again.W, index.W)
    assert (again.model.kind, again.model.activation) == (index.model.kind, index.model.activation)
    assert (again.model.output_mean, again.model.output_std) == (index.model.output_mean, index.model.output_std)
    for ours, theirs in zip(again.model.layers, index.model.layers):
        assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_written_directories_are_what_torch_and_the_original_load(tmp_path, variant):
    # torch.load(weights_only=True), then the original's own module layout with a
    # strict load_state_dict, as Lemur(index=DIR).load_mlp() does
    torch = pytest.importorskip("torch")
    index = lemur.load(DATA / variant)
    lemur.save(index, tmp_path / "again", format="original")
    payload = torch.load(tmp_path / "again" / "mlp.pt", weights_only=True)
    W = torch.load(tmp_path / "again" / "w.pt", weights_only=True)["W"]
    assert np.array_equal(W.numpy(), index.W)
    original = torch.load(DATA / variant / "mlp.pt", weights_only=True)
    config = dict(payload["config"])
    assert {key: value for key, value in config.items() if key != "output_dim"} == {
        key: value for key, value in original["config"].items() if key != "output_dim"}
    assert payload["output_mean"] == original["output_mean"] and payload["output_std"] == original["output_std"]
    expected_keys = [key for key in original["state_dict"] if not key.startswith("output_layer")]
    assert [key for key in payload["state_dict"] if not key.startswith("output_layer")] == expected_keys
    for key in expected_keys:
        assert torch.equal(payload["state_dict"][key], original["state_dict"][key])
    network = original_network(torch, config)
    network.load_state_dict(payload["state_dict"])  # strict
    expected = golden(variant)
    with torch.no_grad():
        token_features = network(torch.from_numpy(expected["query_tokens"][:16])).numpy()
    np.testing.assert_allclose(token_features, expected["token_features_first16"], **FEATURE_TOLERANCE)


def original_network(torch, config):
    """The original LEMUR's module tree for `config` (lemur/model.py: MLP, ELM),
    with the modules' names and order its state dict has."""
    nn = torch.nn
    activation = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish}[config["activation"]]

    class RandomFeatures(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.register_buffer("weight", torch.zeros(d, h))
            self.scale = (2.0 / h) ** 0.5

        def forward(self, x):
            return self.scale * activation()(x @ self.weight)

    class Network(nn.Module):
        def __init__(self):
            super().__init__()
            h = config["final_hidden_dim"]
            if config["model_type"] == "elm":
                self.feature_extractor = nn.Sequential(RandomFeatures(config["input_dim"], h),
                                                       nn.LayerNorm(h, elementwise_affine=False))
            else:
                dims = [config["input_dim"]] + [config["hidden_dim"]] * (config["num_layers"] - 1) + [h]
                modules = []
                for a, b in zip(dims[:-1], dims[1:]):
                    modules += [nn.Linear(a, b), nn.LayerNorm(b), activation()]
                self.feature_extractor = nn.Sequential(*modules)
            self.output_layer = nn.Linear(h, config["output_dim"], bias=False)

        def forward(self, x):
            return self.feature_extractor(x)

    return Network().eval()


def test_a_model_writes_only_mlp_pt(tmp_path):
    model = lemur.load(DATA / "mlp1_mish_d64_h256" / "mlp.pt")
    assert lemur.save(model, tmp_path / "model", format="original") == "an original index directory (mlp.pt)"
    assert sorted(path.name for path in (tmp_path / "model").iterdir()) == ["mlp.pt"]
    assert isinstance(lemur.load(tmp_path / "model"), lemur.Model)


def test_what_the_original_has_no_place_for_is_reported(tmp_path):
    index = lemur.load(DATA / "mlp2_relu_d96_h256")
    with np.load(DATA / "corpus.npz") as corpus:
        full = lemur.Index(index.model, index.W, corpus["doc_tokens_d96"], corpus["doc_counts"],
                           doc_ids=np.arange(300) + 7, sample=corpus["doc_tokens_d96"][:50])
    note = lemur.save(full, tmp_path / "out", format="original")
    assert note.endswith("it has no place for the token store, the document ids (rows are 0, 1, ...), "
                         "the OLS sample")


@pytest.mark.parametrize(
    ("change", "message"),
    [(dict(center=np.zeros(24, np.float32)), "the model has a centre, which the original's directories cannot hold"),
     (dict(query_scale=8.0), "the model's query scale is 8; the original always divides by 32"),
     (dict(activation="gelu-tanh"), "activation 'gelu-tanh' is not one the original's directories know")],
)
def test_models_the_original_cannot_hold_are_refused(tmp_path, change, message):
    from conftest import random_model

    base = random_model("mlp", "gelu")
    model = lemur.Model(base.layers, **{"activation": "gelu", **change})
    with pytest.raises(ValueError, match=message):
        lemur.save(model, tmp_path / "out", format="original")
    assert not (tmp_path / "out" / "mlp.pt").exists()
