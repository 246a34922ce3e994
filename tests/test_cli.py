"""The lemur command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, golden

import lemur
from lemur.cli import main


def test_demo_runs_the_whole_pipeline(capsys):
    assert main(["demo", "--docs", "300", "--queries", "20", "--hidden", "256"]) == 0
    out = capsys.readouterr().out
    assert "made a synthetic corpus: 300 documents" in out
    assert "built an ELM index (no training; h=256)" in out and "saved it" in out
    recall = float(out.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert recall >= 0.9


def test_errors_go_to_stderr_without_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    assert main(["info", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("lemur info: error: ")
    assert "not a file lemur reads" in captured.err
    assert "Traceback" not in captured.err


def test_python_dash_m_lemur_config():
    result = subprocess.run(
        [sys.executable, "-m", "lemur", "config"], capture_output=True, text=True, check=True
    )
    assert "kernel variant:" in result.stdout


def test_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "lemur"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: lemur" in result.stderr


def save_queries(tmp_path, variant="mlp1_gelu_d128_h2048"):
    expected = golden(variant)
    with np.load(DATA / "corpus.npz") as corpus:
        np.save(tmp_path / "docs.npy", corpus[str(expected["corpus_key"])])
        np.save(tmp_path / "doc_counts.npy", corpus["doc_counts"])
    np.save(tmp_path / "queries.npy", expected["query_tokens"].astype(np.float64))  # converted
    np.save(tmp_path / "counts.npy", expected["query_counts"])
    return expected


@pytest.mark.parametrize(
    ("path", "lines"),
    [
        (DATA / "mlp2_relu_d96_h256", ["format:            lemur-original (directory)",
                                       "model:             mlp, 2 layers, dims 96 -> 128 -> 256, activation relu",
                                       "documents:         300 (W: 300 x 256 float32, 0.3 MB)"]),
        (DATA / "elm_gelu_d128_h512" / "mlp.pt", ["model:             elm, 1 layer, dims 128 -> 512, activation gelu",
                                                 "documents:         none (a model without W)"]),
    ],
)
def test_info(capsys, path, lines):
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for line in lines:
        assert line in out


def test_convert_then_info_and_search(capsys, tmp_path):
    assert main(["convert", str(DATA / "elm_gelu_d128_h512"), str(tmp_path / "elm.npz")]) == 0
    assert "lemur index (elm, activation gelu, 300 documents), from lemur-original (directory)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "elm.npz")]) == 0
    assert "format:            lemur\n" in capsys.readouterr().out


def test_search_prints_results_and_writes_npz(capsys, tmp_path):
    expected = save_queries(tmp_path)
    common = ["search", str(DATA / "mlp1_gelu_d128_h2048"), "--queries", str(tmp_path / "queries.npy"),
              "--counts", str(tmp_path / "counts.npy"), "--docs", str(tmp_path / "docs.npy"),
              "--doc-counts", str(tmp_path / "doc_counts.npy"), "--candidates", "50"]
    assert main(common + ["-k", "10", "--out", str(tmp_path / "results.npz")]) == 0
    with np.load(tmp_path / "results.npz") as results:
        assert np.array_equal(results["indices"][0], expected["rerank_top10"][0])
        assert results["scores"].dtype == np.float32
    captured = capsys.readouterr()
    assert "41 queries, 300 documents, k=10, rerank by exact MaxSim" in captured.err
    assert main(common + ["-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query\trank\tdocument\tscore"
    assert lines[1].startswith(f"0\t0\t{expected['rerank_top10'][0, 0]}\t")
    huge = str(10**12)  # clamped to the 300 documents, not allocated
    assert main(common[:-2] + ["--candidates", huge, "-k", huge, "--out", str(tmp_path / "all.npz")]) == 0
    with np.load(tmp_path / "all.npz") as results:
        assert results["indices"].shape == (41, 300)


def test_search_without_document_tokens_is_first_stage_only(capsys, tmp_path):
    save_queries(tmp_path)
    assert main(["search", str(DATA / "mlp1_gelu_d128_h2048"), "--queries", str(tmp_path / "queries.npy"),
                 "--counts", str(tmp_path / "counts.npy"), "-k", "3"]) == 0
    assert "first stage only (no document tokens)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["search", str(DATA / "hostile" / "mlp.pt"), "--queries", "q.npy", "--counts", "c.npy"], "refusing to load it"),
        (["search", str(DATA / "elm_gelu_d128_h512" / "mlp.pt"), "--queries", "q.npy", "--counts", "c.npy"], "holds a model but no W"),
        (["search", str(DATA / "mlp1_gelu_d128_h2048"), "--queries", "missing.npy", "--counts", "c.npy"], "No such file"),
        (["search", str(DATA / "mlp1_gelu_d128_h2048"), "--queries", "q.npy", "--counts", "c.npy", "--docs", "d.npy"], "pass --docs and --doc-counts together"),
        (["info", str(DATA / "hostile" / "object_array.npz")], "holds a Python object array"),
        (["convert", str(DATA / "nowhere"), "out.npz"], "no such file or directory"),
    ],
)
def test_errors_exit_1_with_a_message(capsys, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    save_queries(tmp_path)
    np.save(tmp_path / "q.npy", np.load(tmp_path / "queries.npy"))
    np.save(tmp_path / "c.npy", np.load(tmp_path / "counts.npy"))
    assert main(arguments) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("command", ["info", "convert", "search", "build", "train", "add", "remove", "ann", "postgres",
                                     "demo", "config"])
def test_every_subcommand_has_help(command):
    result = subprocess.run([sys.executable, "-m", "lemur", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: lemur {command}")


def test_bad_option_values_are_usage_errors():
    result = subprocess.run([sys.executable, "-m", "lemur", "search", "x", "--queries", "q", "--counts", "c", "-k", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "expected a positive integer, got 0" in result.stderr


def test_build_add_remove_search(capsys, tmp_path):
    random = np.random.default_rng(0)
    counts = random.integers(3, 20, 80)
    np.save(tmp_path / "docs.npy", random.standard_normal((counts.sum(), 16)).astype(np.float32))
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "new.npy", random.standard_normal((12, 16)))  # float64: converted
    np.save(tmp_path / "new_counts.npy", np.array([5, 7]))
    index = str(tmp_path / "index.npz")
    assert main(["build", "--docs", str(tmp_path / "docs.npy"), "--doc-counts", str(tmp_path / "counts.npy"),
                 "--out", index, "--hidden", "64", "--sample-size", "200", "--no-progress"]) == 0
    assert "num_docs=80" in capsys.readouterr().err
    assert main(["add", index, "--docs", str(tmp_path / "new.npy"), "--doc-counts", str(tmp_path / "new_counts.npy")]) == 0
    assert "added 2 documents (ids 80..81)" in capsys.readouterr().err
    assert main(["remove", index, "--ids", "3, 80"]) == 0
    built = lemur.load(index)
    assert built.num_docs == 80 and 3 not in built.doc_ids and 81 in built.doc_ids
    assert built.sample.shape == (200, 16) and built.model.kind == "elm"
    np.save(tmp_path / "q.npy", np.load(tmp_path / "new.npy")[:7])
    np.save(tmp_path / "qc.npy", np.array([7]))
    assert main(["search", index, "--queries", str(tmp_path / "q.npy"), "--counts", str(tmp_path / "qc.npy"),
                 "-k", "1", "--candidates", "10"]) == 0
    ids, scores = built.search(np.load(tmp_path / "q.npy").astype(np.float32), [7], k=1, candidates=10)
    assert capsys.readouterr().out.splitlines()[1] == f"0\t0\t{ids[0, 0]}\t{scores[0, 0]:.6g}"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["add", str(DATA / "mlp1_mish_d64_h256"), "--docs", "x.npy", "--doc-counts", "c.npy"], "pass --out INDEX.npz"),
        (["remove", str(DATA / "mlp1_mish_d64_h256"), "--ids", "1", "--out", "o.npz", "--ids-file", "i.npy"], "one of them"),
        (["remove", str(DATA / "mlp1_mish_d64_h256"), "--ids", "1,x", "--out", "o.npz"], "comma-separated integers"),
        (["remove", str(DATA / "mlp1_mish_d64_h256"), "--ids", "1000", "--out", "o.npz"], "is not a document id of this index"),
    ],
)
def test_update_errors(capsys, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    assert main(arguments) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_convert_to_a_precision_then_info_and_search_the_mapped_file(capsys, tmp_path, precision):
    save_queries(tmp_path)
    source = tmp_path / "float32.npz"
    target = tmp_path / f"{precision}.npz"
    assert main(["convert", str(DATA / "mlp1_gelu_d128_h2048"), str(source)]) == 0
    assert main(["convert", str(source), str(target), "--precision", precision]) == 0
    assert f"lemur index ({precision})" in capsys.readouterr().out
    assert main(["info", str(target)]) == 0
    info = capsys.readouterr().out
    assert f"first stage:       {precision} (compact copy of W: " in info and "results bitwise float32's" in info
    outputs = []
    for path in (source, target):
        assert main(["search", str(path), "--queries", str(tmp_path / "queries.npy"),
                     "--counts", str(tmp_path / "counts.npy"), "--docs", str(tmp_path / "docs.npy"),
                     "--doc-counts", str(tmp_path / "doc_counts.npy"), "--candidates", "50"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    with pytest.raises(ValueError, match="holds a model, not an index"):
        lemur.formats.convert(DATA / "elm_gelu_d128_h512" / "mlp.pt", tmp_path / "m.npz", precision=precision)


def built_index(tmp_path, num_docs: int, dtype=np.float32, options=()) -> str:
    """lemur build over random token vectors (16 dimensions); the index's path."""
    random = np.random.default_rng(0)
    counts = random.integers(3, 20, num_docs)
    np.save(tmp_path / "docs.npy", random.standard_normal((counts.sum(), 16)).astype(dtype))
    np.save(tmp_path / "counts.npy", counts)
    index = str(tmp_path / "index.npz")
    assert main(["build", "--docs", str(tmp_path / "docs.npy"), "--doc-counts", str(tmp_path / "counts.npy"),
                 "--out", index, "--hidden", "64", "--sample-size", "200", "--no-progress", *options]) == 0
    return index


def test_build_at_a_precision_with_a_float16_token_store(capsys, tmp_path):
    index = built_index(tmp_path, 80, np.float16, ["--precision", "int8"])
    built = lemur.load(index)
    assert built.precision == "int8" and built.doc_tokens.dtype == np.float16
    assert main(["info", index]) == 0
    assert "float16" in capsys.readouterr().out


def test_ann_builds_the_graph_in_place_and_drops_it(capsys, tmp_path):
    pytest.importorskip("usearch", reason="the embedded ANN needs usearch")
    index = built_index(tmp_path, 300)
    random = np.random.default_rng(1)
    assert main(["ann", index, "--dims", "16", "--no-progress"]) == 0
    assert "ANN graph built" in capsys.readouterr().err
    assert lemur.load(index).ann.settings.dims == 16
    assert main(["info", index]) == 0
    assert "ANN:" in capsys.readouterr().out
    np.save(tmp_path / "q.npy", random.standard_normal((7, 16)).astype(np.float32))
    np.save(tmp_path / "qc.npy", np.array([7]))
    assert main(["search", index, "--queries", str(tmp_path / "q.npy"), "--counts", str(tmp_path / "qc.npy"),
                 "-k", "3", "--candidates", "30"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["ann", index, "--drop"]) == 0
    assert lemur.load(index).ann is None


@pytest.mark.filterwarnings("ignore:matmul_precision='bfloat16' without AMX")
def test_train_writes_a_trained_index(capsys, tmp_path):
    random = np.random.default_rng(0)
    counts = random.integers(3, 20, 200)
    np.save(tmp_path / "docs.npy", random.standard_normal((counts.sum(), 16)).astype(np.float32))
    np.save(tmp_path / "counts.npy", counts)
    index = str(tmp_path / "trained.npz")
    assert main(["train", "--docs", str(tmp_path / "docs.npy"), "--doc-counts", str(tmp_path / "counts.npy"),
                 "--out", index, "--epochs", "2", "--hidden", "32", "--final-hidden", "64", "--train-subset", "64",
                 "--learn-subset", "1000", "--sample-size", "256", "--no-progress", "--precision", "int8",
                 "--matmul-precision", "bfloat16"]) == 0
    assert "trained and indexed" in capsys.readouterr().err
    trained = lemur.load(index)
    assert trained.model.kind == "mlp" and trained.precision == "int8" and trained.num_docs == 200
    assert main(["train", "--docs", str(tmp_path / "docs.npy"), "--doc-counts", str(tmp_path / "counts.npy"),
                 "--out", index, "--lr", "-1"]) == 1
    assert "lr must be a positive number" in capsys.readouterr().err
