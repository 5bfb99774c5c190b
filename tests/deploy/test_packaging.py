"""What the distribution ships: the runtime packages, never the dev tooling beside them."""

from __future__ import annotations

import email.parser
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Final

from setuptools import find_packages

import broker

ROOT: Final = Path(__file__).resolve().parents[2]
#: What building the wheel reads: the project file, the files it names, the packages.
BUILD_INPUTS: Final = ("pyproject.toml", "README.md", "LICENSE", "broker", "handlers")


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_only_the_runtime_packages_are_shipped() -> None:
    find: dict[str, Any] = pyproject()["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(str(ROOT), include=find["include"]))
    tops = {name.split(".", 1)[0] for name in shipped}
    assert tops == {"broker", "handlers"}
    # The loopback stub, the benchmarks and the tests sit beside broker/ for development.
    for dev in ("awsstub", "bench", "tests"):
        assert dev not in tops
    assert {"broker.testing", "broker.local"} <= shipped


def test_the_installed_version_is_the_package_version() -> None:
    assert importlib.metadata.version("sfn-callback-broker") == broker.__version__


def test_the_wheel_builds_without_deprecation_warnings_and_carries_its_metadata(
    tmp_path: Path,
) -> None:
    # What `pip install .` does first, in pip's isolated build environment (the setuptools
    # that build-system names, from the registry); -v shows the build backend's own output,
    # where setuptools prints its deprecation warnings.  From a copy of what the build
    # reads: setuptools builds in the source tree and would leave build/ in the clone.
    source = tmp_path / "source"
    had_build_dir = (ROOT / "build").exists()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    deprecated = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert not deprecated, "\n".join(deprecated)
    [wheel] = tmp_path.glob("sfn_callback_broker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        info = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert metadata["Name"] == "sfn-callback-broker"
    assert metadata["Version"] == broker.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License"] is None  # the deprecated field is gone
    assert set(metadata.get_all("Provides-Extra") or ()) >= {"local", "fast", "otel"}
    assert "[console_scripts]\nbroker = broker.cli:main" in entry_points
    assert {"broker", "handlers"} <= tops
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    if not had_build_dir:
        assert not (ROOT / "build").exists(), "the build wrote into the source tree"
