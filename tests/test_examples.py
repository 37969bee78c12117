"""Smoke tests: every file in examples/ runs to completion and prints what it promises."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NEEDS_SKLEARN = {"cnn_digits.py", "mlp_digits.py", "per_example_losses.py", "train_built.py", "per_example_grads.py",
                 "from_onnx.py", "cnn_batchnorm.py", "dask_mlp_digits.py"}
STANDALONE = ["cnn_digits.py", "linear_regression.py", "logistic_regression.py", "mlp_digits.py",
              "per_example_losses.py", "why_scalar_loss.py", "softmax_gradient.py", "mlp_model.py",
              "per_example_grads.py", "from_onnx.py", "transformer_tiny.py", "cnn_batchnorm.py",
              "dask_mlp_digits.py"]


def run(args, build_dir: Path) -> subprocess.CompletedProcess:
    """Run python ARGS inside build_dir (so nothing is written into the repository), built files going there too."""
    env = {**os.environ, "GRAPHC_BUILD_DIR": str(build_dir)}
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=build_dir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{args} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def accuracy(stdout: str) -> float:
    lines = stdout.strip().splitlines()
    match = re.fullmatch(r"test accuracy: (0\.\d{4}|1\.0000)", lines[-1])
    assert match, f"last line is not 'test accuracy: 0.XXXX': {lines[-1]!r}"
    return float(match.group(1))


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(STANDALONE) | {"train_built.py"}


@pytest.mark.parametrize("name", STANDALONE)
def test_example_runs(name, tmp_path):
    if name in NEEDS_SKLEARN:
        pytest.importorskip("sklearn")
        pytest.importorskip("tqdm")
    if name == "from_onnx.py":
        pytest.importorskip("onnx")
    if name == "dask_mlp_digits.py":
        pytest.importorskip("distributed")
    proc = run([EXAMPLES / name], tmp_path)
    if name == "mlp_digits.py":
        assert accuracy(proc.stdout) >= 0.97
        assert (tmp_path / "mlp_digits_numpy.py").is_file()
    if name == "dask_mlp_digits.py":  # the accuracy of examples/mlp_digits.py, and of the same steps in one process
        assert accuracy(proc.stdout) >= 0.97
        assert f"one process, the same steps: test accuracy {accuracy(proc.stdout):.4f}" in proc.stdout
    if name == "cnn_digits.py":
        assert accuracy(proc.stdout) >= 0.98
        assert (tmp_path / "cnn_digits_numpy.py").is_file()
    if name == "cnn_batchnorm.py":  # from predict: running statistics, no dropout
        assert accuracy(proc.stdout) >= 0.98
        assert (tmp_path / "cnn_batchnorm_numpy.py").is_file()
    if name == "linear_regression.py":
        assert "max |dL/dy - (y - t)| = 0.0" in proc.stdout
        assert "equals W - lr*dW: True" in proc.stdout
    if name == "softmax_gradient.py":
        assert "onehot(t))·1/m" in proc.stdout
    if name == "from_onnx.py":
        assert (tmp_path / "mlp_onnx_numpy.py").is_file() and "200 SGD steps from the imported weights" in proc.stdout
        before, after = map(float, re.search(r"loss (\S+) -> (\S+),", proc.stdout).groups())
        assert after < before
    if name == "transformer_tiny.py":
        assert accuracy(proc.stdout) >= 0.95
        assert (tmp_path / "transformer_tiny_numpy.py").is_file() and "predict computes ('logits',)" in proc.stdout
    if name == "per_example_grads.py":
        assert "DP-SGD" in proc.stdout and proc.stdout.count("<- flipped") == 3


def test_cli_build_then_train_built(tmp_path):
    pytest.importorskip("sklearn")
    built = run(["-m", "graphc.cli", "build", EXAMPLES / "mlp_model.py", "-o", tmp_path, "--lr", "0.3"], tmp_path)
    assert "mlp_numpy.py" in built.stdout
    assert accuracy(run([EXAMPLES / "train_built.py"], tmp_path).stdout) >= 0.97


def test_mlp_digits_trains_with_adam(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    proc = run([EXAMPLES / "mlp_digits.py", "--optimizer", "adam"], tmp_path)
    assert accuracy(proc.stdout) >= 0.97
    assert "def init_state(params):" in (tmp_path / "mlp_digits_numpy.py").read_text()
