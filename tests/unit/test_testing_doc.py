"""The README's and docs/testing.md's test examples, as a handler author would use them: the
files they show (each fenced block under a ``<!-- file: PATH -->`` line) written as they
are into a fresh package with only the documented pytest configuration, and pytest run on
it in a subprocess, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from tests.cli import clean_env

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
TESTING: Final = ROOT / "docs" / "testing.md"

_FILE_BLOCK: Final = re.compile(
    r"^<!-- file: (?P<path>[\w./-]+) -->\n```\w*\n(?P<text>.*?)^```$", re.DOTALL | re.MULTILINE
)


def files_of(doc: Path) -> dict[str, str]:
    """Each ``<!-- file: PATH -->`` block of ``doc``, by path (a path shown twice must show
    the same text)."""
    found: dict[str, str] = {}
    for match in _FILE_BLOCK.finditer(doc.read_text(encoding="utf-8")):
        path, text = match["path"], match["text"]
        assert found.setdefault(path, text) == text, f"{doc.name}: {path} shown twice, unlike"
    return found


def write_package(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / path
        assert root in target.resolve().parents
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def run_pytest(root: Path) -> subprocess.CompletedProcess[str]:
    # This venv's Python has what the docs say to install (the project, pytest,
    # pytest-asyncio); the package's pyproject.toml is the only configuration pytest reads
    # (its rootdir is the package). -p no:cacheprovider: nothing written beside it.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=root,
        timeout=120,
        check=False,
    )


def passed(result: subprocess.CompletedProcess[str]) -> int:
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    match = re.fullmatch(r"(\d+) passed in [\d.]+s", last)
    assert match, f"not all passed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    return int(match[1])


def test_the_docs_show_the_files_the_packages_are_made_of() -> None:
    readme = files_of(README)
    assert set(readme) == {"pyproject.toml", "billing/handlers.py", "tests/test_handlers.py"}
    testing = files_of(TESTING)
    assert "pyproject.toml" in testing
    assert "tests/test_handlers.py" in testing
    # docs/testing.md repeats the README's test as it is, on the README's handler.
    assert testing["tests/test_handlers.py"] == readme["tests/test_handlers.py"]
    for files in (readme, testing):
        assert "[tool.pytest.ini_options]" in files["pyproject.toml"]


def test_the_readme_example_passes_in_a_fresh_package(tmp_path: Path) -> None:
    write_package(tmp_path, files_of(README))
    result = run_pytest(tmp_path)
    assert passed(result) == 1


def test_the_testing_doc_examples_pass_in_a_fresh_package(tmp_path: Path) -> None:
    # docs/testing.md's first test is the README's, on the README's handler module.
    readme = files_of(README)
    write_package(tmp_path, {"billing/handlers.py": readme["billing/handlers.py"]})
    write_package(tmp_path, files_of(TESTING))
    result = run_pytest(tmp_path)
    test_functions = sum(
        len(re.findall(r"^async def test_", text, flags=re.MULTILINE))
        for path, text in files_of(TESTING).items()
        if path.startswith("tests/")
    )
    assert test_functions == 8
    assert passed(result) == test_functions


@pytest.mark.parametrize("doc", [README, TESTING], ids=lambda doc: doc.name)
def test_without_asyncio_mode_the_example_fails(tmp_path: Path, doc: Path) -> None:
    # The check above can tell a wrong configuration: drop the setting the docs say is
    # needed and the same example fails.
    # The README's handler and test, under the doc's pyproject.toml less that setting.
    files = files_of(README)
    config = files_of(doc)["pyproject.toml"]
    assert 'asyncio_mode = "auto"\n' in config
    files["pyproject.toml"] = config.replace('asyncio_mode = "auto"\n', "")
    write_package(tmp_path, files)
    result = run_pytest(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "async def functions are not natively supported" in result.stdout
