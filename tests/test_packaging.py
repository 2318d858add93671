"""The wheel carries every file the package has (setuptools packs .py files only unless told).

Built from a copy of the source tree, as ``pip install ssekit`` from the sdist would build
it, with ``CC=false`` so no compiler runs: the extension is optional, and what is checked
here is the package's own files (a data file left out only fails once installed from a
wheel, where an editable install still finds it in the tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Built from, not shipped: the extension's C source, and build outputs in the tree.
NOT_SHIPPED = {".c", ".so", ".pyd", ".pyc"}


def test_the_wheel_carries_every_file_of_the_package(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "ssekit", source / "ssekit", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        env={**os.environ, "CC": "false"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("ssekit-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package = {
        path.relative_to(source).as_posix()
        for path in (source / "ssekit").rglob("*")
        if path.is_file() and path.suffix not in NOT_SHIPPED
    }
    assert "ssekit/proxy/status.html" in package  # the data file the status page serves
    assert package - shipped == set()
