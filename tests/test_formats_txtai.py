"""lemur.formats.txtai: txtai's LEMUR artifacts, read and written, against the
golden outputs txtai itself computed (tests/data/txtai/README.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import DATA, FEATURE_TOLERANCE, random_model

import lemur
from lemur import formats
from lemur.formats import safetensors

TXTAI = DATA / "txtai"
ARTIFACTS = ["mlp_gelu_h256", "mlp2_relu_h256_center", "elm_silu_h256", "mlp_mish_h256_qs8"]
#: the fixtures README: document weights agree with float64 to row-relative 5e-6;
#: 1e-4 leaves room for the SVD of float32 data
WEIGHT_TOLERANCE = {"atol": 1e-4, "rtol": 0}


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(TXTAI / name / "golden.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def uncentred(model: lemur.Model) -> lemur.Model:
    """The same model without its centre: what txtai's Lemur(DIR) computes on raw input."""
    return lemur.Model(model.layers, kind=model.kind, activation=model.activation,
                       output_mean=model.output_mean, output_std=model.output_std,
                       query_scale=model.query_scale)


@pytest.fixture(params=ARTIFACTS)
def artifact(request) -> str:
    return request.param


def test_an_artifact_opens_as_an_index_ready_to_add_documents(artifact):
    index = lemur.load(TXTAI / artifact)
    config = json.loads((TXTAI / artifact / "config.json").read_text())
    assert isinstance(index, lemur.Index) and index.num_docs == 0 and index.has_documents
    assert index.sample.shape == (2048, 64)
    model = index.model
    assert (model.kind, model.activation, model.input_dim, model.feature_dim) == (
        config["modeltype"], config["activation"], 64, 256)
    assert model.query_scale == config["queryscale"]
    assert (model.center is not None) == artifact.endswith("_center")
    assert formats.read(TXTAI / artifact).file_format == "txtai"


def test_query_features_are_txtais(artifact):
    expected, model = golden(artifact), lemur.load(TXTAI / artifact).model
    centred = "query_features_centered" in expected
    features = model.features(expected["query_tokens"], expected["query_counts"])
    np.testing.assert_allclose(features, expected["query_features_centered" if centred else "query_features"],
                               **FEATURE_TOLERANCE)
    raw = uncentred(model)  # txtai's Lemur(DIR) itself never centres
    np.testing.assert_allclose(raw.features(expected["query_tokens"], expected["query_counts"]),
                               expected["query_features"], **FEATURE_TOLERANCE)
    np.testing.assert_allclose(raw.token_features(expected["query_tokens"][:16]),
                               expected["token_features_first16"], **FEATURE_TOLERANCE)


def test_document_weights_are_txtais(artifact):
    expected = golden(artifact)
    index = lemur.load(TXTAI / artifact)
    index.add_documents(expected["doc_tokens"], expected["doc_counts"])
    centred = "doc_weights_centered" in expected
    np.testing.assert_allclose(index.W, expected["doc_weights_centered" if centred else "doc_weights"],
                               **WEIGHT_TOLERANCE)
    raw = lemur.Index(uncentred(index.model), np.empty((0, 256), np.float32), sample=index.sample)
    raw.add_documents(expected["doc_tokens"], expected["doc_counts"])
    np.testing.assert_allclose(raw.W, expected["doc_weights"], **WEIGHT_TOLERANCE)


def test_centring_is_txtais():
    expected = golden("mlp2_relu_h256_center")
    model = lemur.load(TXTAI / "mlp2_relu_h256_center").model
    assert np.array_equal(model.center, expected["center"])
    # txtai skipped re-normalising the unit rows first: a 1-ulp step
    for tokens, centred in [(expected["query_tokens"][:16], expected["query_tokens_centered_first16"]),
                            (expected["doc_tokens"][:16], expected["doc_tokens_centered_first16"])]:
        np.testing.assert_allclose(model.centred(tokens, 1), centred, atol=1e-7, rtol=0)


def test_centring_leaves_zero_rows_alone_and_gives_unit_rows():
    model = lemur.load(TXTAI / "mlp2_relu_h256_center").model
    tokens = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32) * 3
    tokens[2] = 0
    centred = model.centred(tokens, 2)
    assert np.array_equal(centred[2], np.zeros(64, np.float32))
    np.testing.assert_allclose(np.linalg.norm(centred[[0, 1, 3, 4]], axis=1), 1, atol=1e-6)
    unit = tokens[0] / np.linalg.norm(tokens[0]) - model.center
    np.testing.assert_allclose(centred[0], unit / np.linalg.norm(unit), atol=1e-6)


def test_the_rank_of_the_sample_is_txtais(artifact):
    from lemur import fitting

    expected, index = golden(artifact), lemur.load(TXTAI / artifact)
    Z = index.model._token_features(index.sample, 2)
    values = np.linalg.svd(Z.astype(np.float64), compute_uv=False)
    assert int((values > np.finfo(np.float32).eps * 2048 * values.max()).sum()) == int(expected["svd_rank"])
    projection = fitting.pseudo_inverse_transposed(Z, 2)
    assert np.linalg.matrix_rank(projection.astype(np.float64), tol=1e-3 * np.abs(projection).max()) == int(expected["svd_rank"])


# -- writing ------------------------------------------------------------------------------------


def test_converting_an_artifact_to_txtai_gives_txtais_own_bytes(tmp_path, artifact):
    _, note = formats.convert(TXTAI / artifact, tmp_path / "again", format="txtai")
    assert "txtai LEMUR artifact" in note
    for name in ("config.json", "model.safetensors"):  # what txtai and the safetensors library wrote
        assert (tmp_path / "again" / name).read_bytes() == (TXTAI / artifact / name).read_bytes()


def test_saving_a_loaded_artifact_keeps_the_model_and_sample(tmp_path, artifact):
    index = lemur.load(TXTAI / artifact)
    lemur.save(index, tmp_path / "again", format="txtai")
    ours, _ = safetensors.read(tmp_path / "again" / "model.safetensors")
    theirs, _ = safetensors.read(TXTAI / artifact / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[name], theirs[name]) for name in theirs)
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    original = json.loads((TXTAI / artifact / "config.json").read_text())
    # the model keeps what it computes with; txtai's seed and training record are the file's
    for key in ("modeltype", "inputdim", "finalhiddendim", "layers", "activation", "queryscale"):
        assert config[key] == original[key]


def test_a_lemur_index_converts_to_an_artifact_and_back(tmp_path):
    model = random_model("mlp", "silu", dims=(24, 32, 32, 40), seed=3)
    center = np.random.default_rng(4).standard_normal(24).astype(np.float32)
    model = lemur.Model(model.layers, activation="silu", output_mean=0.125, output_std=0.5,
                        center=center, query_scale=12)
    tokens = np.random.default_rng(5).standard_normal((30, 24)).astype(np.float32)
    index = lemur.Index(model, np.empty((0, 40), np.float32), sample=tokens[:20] / 4)
    index.add_documents(tokens, [10, 20])
    note = lemur.save(index, tmp_path / "artifact", format="txtai")
    assert "so W was left out" in note
    back = lemur.load(tmp_path / "artifact")
    assert back.num_docs == 0 and np.array_equal(back.sample, index.sample)
    assert np.array_equal(back.model.center, center) and back.model.query_scale == 12
    for ours, theirs in zip(back.model.layers, model.layers):
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    # txtai keeps the statistics as float32
    assert back.model.output_mean == 0.125 and back.model.output_std == 0.5
    back.add_documents(tokens, [10, 20])
    assert np.array_equal(back.W, index.W)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (random_model("mlp", "gelu-tanh"), "activation 'gelu-tanh' is not one txtai's artifacts know"),
        (random_model("mlp", "gelu", dims=(8, 16, 12, 20)), r"hidden layers have widths \[12, 16\]"),
    ],
)
def test_models_txtai_cannot_hold_are_refused(tmp_path, model, message):
    index = lemur.Index(model, np.empty((0, model.feature_dim), np.float32),
                        sample=np.ones((3, model.input_dim), np.float32))
    with pytest.raises(ValueError, match=message):
        lemur.save(index, tmp_path / "out", format="txtai")


def test_an_artifact_needs_the_sample(tmp_path):
    index = lemur.Index(random_model("mlp", "gelu"), np.empty((0, 40), np.float32))
    with pytest.raises(ValueError, match="txtai's artifacts need the OLS sample"):
        lemur.save(index, tmp_path / "out", format="txtai")
    with pytest.raises(ValueError, match="txtai's artifacts need the OLS sample"):
        lemur.save(random_model("mlp", "gelu"), tmp_path / "out", format="txtai")


# -- what txtai refuses, refused here too -------------------------------------------------------


def damaged(tmp_path, change_config=None, change_tensors=None):
    target = tmp_path / "artifact"
    shutil.copytree(TXTAI / "mlp_gelu_h256", target)
    if change_config:
        config = json.loads((target / "config.json").read_text())
        change_config(config)
        (target / "config.json").write_text(json.dumps(config))
    if change_tensors:
        tensors, _ = safetensors.read(target / "model.safetensors")
        change_tensors(tensors)
        safetensors.write(target / "model.safetensors", tensors)
    return target


@pytest.mark.parametrize(
    ("change_config", "change_tensors", "message"),
    [
        (lambda c: c.update(extra=1), None, r"unknown keys \['extra'\]"),
        (lambda c: c.pop("inputdim"), None, "missing key 'inputdim'"),
        (lambda c: c.update(layers=0), None, "layers must be a positive integer"),
        (lambda c: c.update(modeltype="rnn"), None, "modeltype must be 'mlp' or 'elm'"),
        (lambda c: c.update(queryscale="32"), None, "queryscale must be a number"),
        (lambda c: c.update(activation="tanh"), None, "unknown activation 'tanh'"),
        (None, lambda t: t.pop("lemur.sample"), "missing tensor 'lemur.sample'"),
        (None, lambda t: t.update(unexpected=np.ones(2, np.float32)), r"unknown tensors \['unexpected'\]"),
        (None, lambda t: t.update({"featureextractor.0.bias": np.ones(5, np.float32)}),
         r"'featureextractor.0.bias' must be floats of shape \(256,\)"),
        (lambda c: c.update(inputdim=32), None, r"must be floats of shape \(256, 32\)"),
    ],
)
def test_damaged_artifacts_are_refused(tmp_path, change_config, change_tensors, message):
    with pytest.raises(ValueError, match=message):
        lemur.load(damaged(tmp_path, change_config, change_tensors))


def test_txtai_itself_loads_what_lemur_writes(tmp_path):
    # only where txtai and torch are installed (not in CI)
    pooling = pytest.importorskip("txtai.models.pooling.lemur")
    index = lemur.load(TXTAI / "mlp2_relu_h256_center")
    lemur.save(index, tmp_path / "artifact", format="txtai")
    theirs = pooling.Lemur(str(tmp_path / "artifact"))
    expected = golden("mlp2_relu_h256_center")
    queries = np.split(expected["query_tokens"], np.cumsum(expected["query_counts"])[:-1])
    np.testing.assert_allclose(theirs(queries, "query"), expected["query_features"], **FEATURE_TOLERANCE)
