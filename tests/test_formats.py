"""lemur.formats: telling formats apart by content, lemur.load / lemur.save, round
trips between every format, and a layout with no import circle."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA, random_model

import lemur
from lemur import formats

PACKAGE = pathlib.Path(lemur.__file__).parent


def test_formats_are_told_apart_by_content_not_name(tmp_path):
    lemur.Index(random_model("mlp", "gelu"), np.ones((3, 40), np.float32)).save(tmp_path / "index.npz")
    shutil.copy(tmp_path / "index.npz", tmp_path / "looks_like.pt")
    shutil.copy(DATA / "mlp1_mish_d64_h256" / "mlp.pt", tmp_path / "looks_like.npz")
    shutil.copy(DATA / "mlp1_mish_d64_h256" / "model.npz", tmp_path / "export.bin")
    assert formats.detect(tmp_path / "looks_like.pt") == "lemur"
    assert formats.detect(tmp_path / "looks_like.npz") == "original"
    assert formats.detect(tmp_path / "export.bin") == "lemur-numpy"
    assert formats.detect(DATA / "mlp2_relu_d96_h256") == "original"
    assert formats.detect(DATA / "txtai" / "elm_silu_h256") == "txtai"
    assert isinstance(lemur.load(tmp_path / "looks_like.npz"), lemur.Model)


def test_a_bare_safetensors_file_asks_for_its_directory():
    with pytest.raises(ValueError, match="a bare safetensors file; pass the txtai artifact directory"):
        lemur.load(DATA / "txtai" / "mlp_gelu_h256" / "model.safetensors")


def test_an_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'onnx'; expected one of lemur, original, txtai"):
        lemur.save(random_model("mlp", "gelu"), tmp_path / "x", format="onnx")


def test_model_and_index_methods_are_the_same_calls(tmp_path):
    index = lemur.load(DATA / "mlp2_relu_d96_h256")
    index.save(tmp_path / "a.npz")
    lemur.save(index, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    index.model.save(tmp_path / "model_dir", format="original")
    assert lemur.Model.load(tmp_path / "model_dir").activation == "relu"
    assert lemur.Model.load(tmp_path / "a.npz").kind == "mlp"  # an index file gives its model


def assert_same_model(a: lemur.Model, b: lemur.Model) -> None:
    assert (a.kind, a.activation, a.query_scale) == (b.kind, b.activation, b.query_scale)
    assert (a.center is None and b.center is None) or np.array_equal(a.center, b.center)
    for ours, theirs in zip(a.layers, b.layers, strict=True):
        assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(ours, theirs))


@pytest.mark.parametrize("variant", ["mlp1_gelu_d128_h2048", "mlp2_relu_d96_h256", "elm_gelu_d128_h512"])
def test_round_trips_through_every_format_are_bitwise(tmp_path, variant):
    start = lemur.load(DATA / variant)
    with np.load(DATA / "corpus.npz") as corpus:
        start.attach_sample(corpus[str(np.load(DATA / variant / "golden.npz")["corpus_key"])], size=500, seed=1)
    lemur.save(start, tmp_path / "a.npz")
    formats.convert(tmp_path / "a.npz", tmp_path / "original", format="original")
    formats.convert(tmp_path / "original", tmp_path / "b.npz")
    formats.convert(tmp_path / "a.npz", tmp_path / "txtai", format="txtai")
    formats.convert(tmp_path / "txtai", tmp_path / "c.npz")
    a, b, c = (lemur.load(tmp_path / name) for name in ("a.npz", "b.npz", "c.npz"))
    for other in (b, c):
        assert_same_model(a.model, other.model)
    # what each format holds comes back bit for bit
    assert np.array_equal(b.W, start.W) and (b.model.output_mean, b.model.output_std) == (
        start.model.output_mean, start.model.output_std)
    assert np.array_equal(c.sample, start.sample)
    assert (c.model.output_mean, c.model.output_std) == (  # txtai keeps them as float32
        float(np.float32(start.model.output_mean)), float(np.float32(start.model.output_std)))


def test_the_cli_converts_to_every_format(tmp_path, capsys):
    from lemur.cli import main

    assert main(["convert", str(DATA / "txtai" / "mlp_mish_h256_qs8"), str(tmp_path / "i.npz")]) == 0
    assert "lemur index (mlp, activation mish), from txtai" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "i.npz"), str(tmp_path / "t"), "--format", "txtai"]) == 0
    assert (tmp_path / "t" / "model.safetensors").read_bytes() == (
        DATA / "txtai" / "mlp_mish_h256_qs8" / "model.safetensors").read_bytes()
    assert main(["convert", str(tmp_path / "i.npz"), str(tmp_path / "o"), "--format", "original"]) == 1
    assert "query scale is 8; the original always divides by 32" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "i.npz")]) == 0
    out = capsys.readouterr().out
    assert "query pooling:     sum of psi / 8" in out and "OLS sample:        2,048 tokens" in out


# -- the layout ------------------------------------------------------------------------------------


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The lemur modules `path` imports when it is imported (not inside
    functions): ``from package import submodule`` counts as the submodule (a
    package's own __init__ runs before any of its modules, by Python's rules)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}
    return {module for module in found if module in modules}


def test_no_module_imports_itself_back_through_others():
    sources = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: top_level_imports(path, set(sources)) - {name, "lemur"} for name, path in sources.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(other):] + [other]))
            if other not in state:
                visit(other, trail + [other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # and the direction: the model and the index know nothing of files
    for low in ("lemur.model", "lemur.index", "lemur.retrieval", "lemur.fitting"):
        assert not {other for other in graph[low] if other.startswith("lemur.formats")}, low


@pytest.mark.parametrize("module", sorted(module_name(path) for path in PACKAGE.rglob("*.py")
                                          if path.name != "__main__.py"))
def test_every_module_imports_first_on_its_own(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
