"""lemur.formats.lemur_npz: lemur's own format, its versions, and every defect."""

from __future__ import annotations

import mmap
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
        assert int(arrays["format_version"]) == lemur_npz.FORMAT_VERSION == 3


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
        (dict(format_version=np.int64(4)), "written in format version 4 by a newer lemur; this lemur reads versions up to 3"),
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




# -- version 3: the precision, its compact copy, mapped opening ---------------------


def compact_index(precision: str, num_docs: int = 300) -> lemur.Index:
    random = np.random.default_rng(3)
    model = random_model("mlp", "gelu", dims=(12, 96))
    W = random.standard_normal((num_docs, 96)).astype(np.float32)
    counts = random.integers(1, 5, num_docs)
    tokens = random.standard_normal((int(counts.sum()), 12)).astype(np.float32)
    return lemur.Index(model, W, tokens, counts, precision=precision)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
@pytest.mark.parametrize("mmap", [False, True])
def test_the_compact_copy_is_stored_and_used_as_it_is(tmp_path, precision, mmap, monkeypatch):
    index = compact_index(precision)
    index.save(tmp_path / "index.npz")
    with np.load(tmp_path / "index.npz", allow_pickle=False) as arrays:
        assert str(arrays["precision"]) == precision
        assert np.array_equal(arrays["compact_codes"], index.compact.codes)
    monkeypatch.setattr(lemur.first_stage.compact, "build", lambda *a, **k: pytest.fail("rebuilt"))
    again = lemur.load(tmp_path / "index.npz", mmap=mmap)
    assert again.precision == precision
    np.testing.assert_array_equal(again.compact.params, index.compact.params)
    np.testing.assert_array_equal(again.compact.basis, index.compact.basis)
    queries = np.random.default_rng(4).standard_normal((40, 12)).astype(np.float32)
    counts = np.full(10, 4)
    for ours, theirs in zip(index.search(queries, counts, k=5, candidates=20),
                            again.search(queries, counts, k=5, candidates=20)):
        np.testing.assert_array_equal(ours, theirs)


def test_a_precision_without_its_compact_copy_gets_one_built(tmp_path):
    arrays = saved_lemur(tmp_path)
    path = write(tmp_path / "by-hand.npz", {**arrays, "precision": np.array("int8")})
    index = lemur.load(path)
    assert index.precision == "int8" and index.compact.num_docs == 2


def test_version_2_files_open_at_float32(tmp_path):
    arrays = saved_lemur(tmp_path)
    arrays = {key: value for key, value in arrays.items() if key != "precision"}
    path = write(tmp_path / "v2.npz", {**arrays, "format_version": np.int64(2)})
    assert lemur.load(path).precision == "float32"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(precision=np.array("float8")), "key 'precision': precision must be one of"),
        (dict(compact_codes=np.zeros((5, 24, 256), np.uint8)), r"key 'compact_codes' must have shape \(5, 24, 256\)"
         .replace("(5, 24", "(5, 24")),
        (dict(compact_params=np.zeros((5, 21, 64), np.float64)), "compact copy's params must be float32"),
        (dict(compact_basis=np.zeros((16, 95), np.float32)), r"key 'compact_basis' must have shape \(any, 96\)"),
        (dict(compact_basis=np.ones((16, 96), np.float32)), "basis's rows are not orthonormal"),
        (dict(compact_codes=np.zeros((5, 24, 256), np.uint16)), "compact copy's codes must be uint8"),
    ],
)
def test_defective_compact_copies_are_refused(tmp_path, change, message):
    compact_index("int8").save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    if "compact_codes" in change and change["compact_codes"].dtype == np.uint8:
        change = {"compact_codes": np.zeros((arrays["compact_codes"].shape[0] + 1,) + arrays["compact_codes"].shape[1:],
                                            np.uint8)}
        message = "key 'compact_codes' must have shape"
    path = write(tmp_path / "bad.npz", {**arrays, **change})
    with pytest.raises(ValueError, match=message):
        lemur.load(path)


def test_a_float32_file_with_a_compact_copy_is_refused(tmp_path):
    compact_index("int8").save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    path = write(tmp_path / "bad.npz", {**arrays, "precision": np.array("float32")})
    with pytest.raises(ValueError, match="a float32 index has no compact copy"):
        lemur.load(path)


def is_mapped(array: np.ndarray) -> bool:
    return archive.mapping_of(array) is not None


def test_a_mapped_index_reads_nothing_at_opening_and_copies_on_write(tmp_path):
    index = compact_index("int8", num_docs=500)
    index.attach_sample(np.random.default_rng(5).standard_normal((200, 12)).astype(np.float32), size=None)
    index.save(tmp_path / "index.npz")
    before = (tmp_path / "index.npz").read_bytes()
    mapped = lemur.load(tmp_path / "index.npz", mmap=True)
    for array in (mapped.W, mapped.doc_tokens, mapped.compact.codes, mapped.compact.params):
        assert is_mapped(array) and not array.flags.writeable
    new = np.random.default_rng(6).standard_normal((9, 12)).astype(np.float32)
    ids = mapped.add_documents(new, [3, 3, 3])
    mapped.remove_documents([0, 7, int(ids[1])])
    index.add_documents(new, [3, 3, 3])
    index.remove_documents([0, 7, int(ids[1])])
    assert (tmp_path / "index.npz").read_bytes() == before  # the file is never written
    np.testing.assert_array_equal(mapped.W, index.W)
    np.testing.assert_array_equal(mapped.compact.codes, index.compact.codes)
    mapped.save(tmp_path / "index.npz")  # over the mapped file: a new file, the old mapping stays valid
    np.testing.assert_array_equal(lemur.load(tmp_path / "index.npz").W, index.W)


def test_only_lemur_files_stored_uncompressed_can_be_mapped(tmp_path):
    compact_index("float32").save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    np.savez_compressed(tmp_path / "compressed.npz", **arrays)
    with pytest.raises(ValueError, match="compressed and cannot be mapped"):
        lemur.load(tmp_path / "compressed.npz", mmap=True)
    assert lemur.load(tmp_path / "compressed.npz").num_docs == 300
    with pytest.raises(ValueError, match="mmap=True maps lemur's own files only"):
        lemur.load(pathlib.Path(__file__).parent / "data" / "mlp1_gelu_d128_h2048", mmap=True)


def test_an_index_with_a_centre_keeps_its_centred_tokens_through_a_round_trip(tmp_path):
    base = random_model("mlp", "gelu")
    model = lemur.Model(list(base.layers), kind="mlp", activation="gelu", center=np.ones(24, np.float32))
    tokens = np.random.default_rng(7).standard_normal((30, 24)).astype(np.float32)
    index = lemur.Index(model, np.zeros((3, 40), np.float32), tokens, [10, 10, 10])
    index.save(tmp_path / "centred.npz")
    assert not np.array_equal(model.centred(index.doc_tokens, 1), index.doc_tokens)  # centring twice shows
    for mmap in (False, True):
        np.testing.assert_array_equal(lemur.load(tmp_path / "centred.npz", mmap=mmap).doc_tokens,
                                      index.doc_tokens)


def resident_bytes_of(path: pathlib.Path) -> int:
    """This process's resident bytes of the mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:
                inside = len(fields) >= 6 and os.path.realpath(fields[-1]) == os.path.realpath(path)
            elif inside and fields[:1] == ["Rss:"]:
                total += int(fields[1]) * 1024
    return total


def test_what_a_mapped_opening_reads_comes_first_in_the_file(tmp_path):
    """The members read at opening (the model, doc_counts, doc_ids, the
    basis) lie together before the mapped arrays: one stretch to read."""
    index = compact_index("int8")
    index = lemur.Index(index.model, index.W, index.doc_tokens, index.doc_counts, precision="int8",
                        doc_ids=np.arange(index.num_docs) * 3)
    index.save(tmp_path / "index.npz")
    with zipfile.ZipFile(tmp_path / "index.npz") as archive:
        names = [member.filename.removesuffix(".npy")
                 for member in sorted(archive.infolist(), key=lambda member: member.header_offset)]
    mapped = [name in lemur_npz.MAPPED for name in names]
    assert {"W", "doc_tokens", "compact_codes", "compact_params"} <= set(names)
    assert mapped == sorted(mapped)  # no read member after a mapped one


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_opening_a_mapped_index_reads_none_of_its_large_arrays(tmp_path):
    """Not W, the token store, nor the compact copy's codes or parameters (8 MB
    at 100k documents: their largest norm is taken at the first scan)."""
    index = compact_index("int8", num_docs=20000)
    index.save(tmp_path / "index.npz")
    mapped = lemur.load(tmp_path / "index.npz", mmap=True)
    assert resident_bytes_of(tmp_path / "index.npz") < index.compact.params.nbytes / 4
    queries = np.random.default_rng(9).standard_normal((8, 12)).astype(np.float32)
    np.testing.assert_array_equal(mapped.search(queries, [2] * 4, k=3, candidates=10)[0],
                                  index.search(queries, [2] * 4, k=3, candidates=10)[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_a_mapped_index_keeps_at_most_its_budget_of_w_and_tokens_resident(tmp_path, monkeypatch):
    """Whatever the kernel maps around each row and token read (64 KiB, or a
    whole large folio of the page cache: 512 KiB on Linux 6.18), after every
    search no more than MAPPED_READS_BYTES of the file beyond its compact
    copy stays resident: the kernel's own count decides, not the estimate
    of what a read maps (here made to say nothing)."""
    index = compact_index("int8", num_docs=20000)
    index.save(tmp_path / "index.npz")
    mapped = lemur.load(tmp_path / "index.npz", mmap=True)
    budget = 2**18
    monkeypatch.setattr(lemur.Index, "MAPPED_READS_BYTES", budget)
    monkeypatch.setattr(lemur.index, "_MAPPED_WINDOW", 0)
    # the compact copy's mappings, each rounded out to whole pages
    compact_bytes = index.compact.codes.nbytes + index.compact.params.nbytes + 4 * mmap.PAGESIZE
    queries = np.random.default_rng(10).standard_normal((30, 12)).astype(np.float32)
    for query in queries.reshape(10, 3, 12):
        np.testing.assert_array_equal(mapped.search(query, [3], k=5, candidates=40)[0],
                                      index.search(query, [3], k=5, candidates=40)[0])
        assert resident_bytes_of(tmp_path / "index.npz") <= compact_bytes + budget


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_a_mapped_index_lets_go_of_what_it_reads_through_the_mapping(tmp_path, monkeypatch):
    index = compact_index("float32", num_docs=3000)  # the float32 scan reads all of W
    index.save(tmp_path / "index.npz")
    mapped = lemur.load(tmp_path / "index.npz", mmap=True)
    queries = np.random.default_rng(8).standard_normal((40, 12)).astype(np.float32)
    monkeypatch.setattr(lemur.Index, "MAPPED_READS_BYTES", 2**40)  # never let go
    mapped.search(queries, [4] * 10, k=5, candidates=20)
    kept = resident_bytes_of(tmp_path / "index.npz")
    assert kept >= mapped.W.nbytes
    monkeypatch.setattr(lemur.Index, "MAPPED_READS_BYTES", 0)  # let go after every call
    results = mapped.search(queries, [4] * 10, k=5, candidates=20)
    assert resident_bytes_of(tmp_path / "index.npz") < kept - mapped.W.nbytes // 2
    assert_same = index.search(queries, [4] * 10, k=5, candidates=20)
    np.testing.assert_array_equal(results[0], assert_same[0])
