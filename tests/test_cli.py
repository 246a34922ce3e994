"""The lemur command line."""

from __future__ import annotations

import subprocess
import sys

from conftest import DATA

from lemur.cli import main


def test_demo_with_a_random_model(capsys):
    assert main(["demo", "--queries", "3", "--tokens", "5", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "made a random model, saved it and loaded it back" in out
    assert "features of 3 queries x 5 tokens (d=128) -> (3, 2048) float32" in out


def test_demo_with_a_fork_export(capsys):
    path = DATA / "mlp2_relu_d96_h256" / "model.npz"
    assert main(["demo", "--model", str(path), "--activation", "relu", "--repeat", "1"]) == 0
    assert "Model(kind='mlp', activation='relu', layers=2, dims=96 -> 128 -> 256)" in capsys.readouterr().out


def test_errors_go_to_stderr_without_traceback(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    assert main(["demo", "--model", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("lemur demo: error: ")
    assert "not a readable .npz archive" in captured.err
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
