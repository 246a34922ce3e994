"""lemur.torch_format and lemur.load: the original's files, read without torch and
without running code from them."""

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
from lemur import files, npz, torch_format

MARKER = pathlib.Path("/tmp/lemur_pwned")
HOSTILE = DATA / "hostile" / "mlp.pt"


def write(tmp_path, data: bytes, name="file.pt") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


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


def test_raw_reader_matches_torch_for_every_tensor(variant):
    torch = pytest.importorskip("torch")
    ours = torch_format.load(DATA / variant / "mlp.pt")
    theirs = torch.load(DATA / variant / "mlp.pt", weights_only=True)
    assert ours["config"] == theirs["config"]
    assert list(ours["state_dict"]) == list(theirs["state_dict"])
    for key, tensor in theirs["state_dict"].items():
        assert np.array_equal(ours["state_dict"][key], tensor.numpy())


@pytest.mark.parametrize("variant", [v for v in VARIANTS if VARIANTS[v][0] == "model.npz"])
def test_directories_load_to_the_forks_export(variant):
    directory = files.read(DATA / variant)
    export = npz.load(DATA / variant / "model.npz", activation=directory.model.activation)
    assert directory.file_format == files.ORIGINAL_DIRECTORY
    assert np.array_equal(directory.W, export.W)
    for ours, theirs in zip(directory.model.layers, export.model.layers):
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    expected = golden(variant)
    from_directory = lemur.Index(directory.model, directory.W)
    from_export = lemur.Index(export.model, export.W)
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


# -- hostile files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [lemur.load, lemur.Model.load, lemur.Index.load, torch_format.load,
     lambda path: files.read(path.parent)],
)
def test_hostile_pickle_is_refused_without_running(load):
    MARKER.unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"refusing to load it: its pickle names the global 'posix\.system'"):
        load(HOSTILE)
    assert not MARKER.exists()


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
        torch_format.load(path)
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
    loaded = torch_format.load(write(tmp_path, archive(value, {"0": data})))
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
    loaded = torch_format.load(write(tmp_path, archive(value, {"0": half, "1": bfloat16, "2": longs})))
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
        torch_format.load(path)


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
        torch_format.load(write(tmp_path, archive(value, storages)))


def test_big_endian_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="only little-endian files are supported"):
        torch_format.load(write(tmp_path, archive({}, {}, byteorder=b"big")))


def test_legacy_and_non_zip_files_are_refused(tmp_path):
    legacy = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."
    for data in (legacy, b"", b"garbage"):
        with pytest.raises(ValueError, match="not a readable zip archive .*legacy format"):
            torch_format.load(write(tmp_path, data))
    with pytest.raises(ValueError, match="legacy format"):
        lemur.load(write(tmp_path, legacy, "old.pt"))


def test_archives_without_one_data_pkl_are_refused(tmp_path):
    path = tmp_path / "two.pt"
    with zipfile.ZipFile(path, "w") as zip_file:
        zip_file.writestr("a/data.pkl", b"\x80\x02}.")
        zip_file.writestr("b/data.pkl", b"\x80\x02}.")
    with pytest.raises(ValueError, match="expected one <archive>/data.pkl member"):
        torch_format.load(path)


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
    with pytest.raises(ValueError, match="not a LEMUR index directory .no mlp.pt."):
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
        loaded = torch_format.load(path)["W"]
    except ValueError:
        return
    # it loaded: then the record was consistent, and the view is the right one
    assert stored == numel and len(size) == len(stride)
    expected = np.lib.stride_tricks.as_strided(
        data[offset:] if all(size) else data[:0], shape=tuple(size), strides=tuple(4 * s for s in stride)
    )
    assert np.array_equal(loaded, expected)
