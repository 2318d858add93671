"""``.ci/run`` cleans up after itself (issue 19, section 5).

The script runs for real, with ``python3`` (and ``apt-get``) on its PATH replaced by stubs:
``python3 -m venv DIR`` makes a venv whose tools do nothing and succeed, or fail when
``SSEKIT_FAKE_FAIL`` names them. No package is installed, nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PYTHON3 = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    for tool in python ruff mypy; do
        printf '#!/bin/sh\\n[ "$SSEKIT_FAKE_FAIL" = %s ] && exit 1\\nexit 0\\n' "$tool" \\
            > "$3/bin/$tool"
        chmod +x "$3/bin/$tool"
    done
fi
exit 0
"""


def run_ci(tmp_path: Path, **env: str) -> tuple[int, Path]:
    """Run ``.ci/run`` with the stubs; its exit status and its TMPDIR (empty at first)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("python3", PYTHON3), ("apt-get", "#!/bin/sh\nexit 0\n")):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # Never the venv of a .ci/run this suite may be running under (SSEKIT_CI_VENV=...):
    # the stubs would be written into it, through its python symlink to the real one.
    inherited = {k: v for k, v in os.environ.items() if k != "SSEKIT_CI_VENV"}
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")],
        env={**inherited, "PATH": f"{stubs}:{os.environ['PATH']}", "TMPDIR": str(scratch),
             **env},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    return result.returncode, scratch


@pytest.mark.parametrize("failing", ["", "ruff", "python"], ids=["passes", "lint", "tests"])
def test_the_temporary_venv_is_removed_however_the_run_ends(tmp_path: Path, failing: str) -> None:
    code, scratch = run_ci(tmp_path, SSEKIT_FAKE_FAIL=failing)
    assert (code == 0) == (failing == "")
    assert list(scratch.iterdir()) == []


def test_a_venv_named_by_ssekit_ci_venv_is_used_and_kept(tmp_path: Path) -> None:
    venv = tmp_path / "mine" / "venv"
    code, scratch = run_ci(tmp_path, SSEKIT_CI_VENV=str(venv), SSEKIT_FAKE_FAIL="")
    assert code == 0
    assert (venv / "bin" / "ruff").exists()  # the one it used, left where it is
    assert list(scratch.iterdir()) == []
