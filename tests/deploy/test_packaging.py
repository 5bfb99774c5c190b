"""What the distribution ships: the runtime packages, never the dev tooling beside them."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any, Final

from setuptools import find_packages

import broker

ROOT: Final = Path(__file__).resolve().parents[2]


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
