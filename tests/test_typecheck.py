"""What a library author types against ssekit passes mypy --strict: the README's snippets,
an httpx-sse script migrated by an import change, and a typed library (tests/typecheck/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from test_readme import SNIPPETS

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "tests" / "typecheck").glob("*.py"))
# An untyped function: --strict must flag it, or the run checked nothing strictly.
CANARY = "def untyped(x):\n    return x\n"


def test_readme_snippets_and_typed_scripts_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for i, code in enumerate(SNIPPETS):
        path = tmp_path / f"readme_snippet_{i}.py"
        path.write_text(code, encoding="utf-8")
        files.append(path)
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY, encoding="utf-8")
    assert len(SCRIPTS) >= 2
    command = [sys.executable, "-m", "mypy", "--strict", "--output", "json"]
    command += ["--cache-dir", str(ROOT / ".mypy_cache")]
    out = subprocess.run(
        [*command, *map(str, [*files, *SCRIPTS, canary])],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    errors = [r for r in reports if r["severity"] == "error"]
    assert [r for r in errors if Path(r["file"]).name != "canary.py"] == [], out.stdout
    assert [(Path(r["file"]).name, r["code"]) for r in errors] == [
        ("canary.py", "no-untyped-def")
    ], out.stdout + out.stderr


def test_the_migrated_httpx_sse_script_runs() -> None:
    sys.path.insert(0, str(ROOT / "tests" / "typecheck"))
    try:
        import httpx_sse_migrated
    finally:
        sys.path.remove(str(ROOT / "tests" / "typecheck"))
    assert httpx_sse_migrated.main() == "Hello, world"
    assert anyio.run(httpx_sse_migrated.amain) == "Hello, world"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_typed_scripts_import_cleanly(script: Path) -> None:
    # assert_type and the annotations are real at run time too.
    namespace: dict[str, object] = {"__name__": script.stem}
    exec(compile(script.read_text(encoding="utf-8"), str(script), "exec"), namespace)
    assert callable(namespace.get("main") or namespace.get("first_delta"))
