"""The package's version: the one place it is written.

pyproject.toml reads it from here (``[tool.setuptools.dynamic]``), so the wheel's
metadata and ``broker.__version__`` cannot disagree.
"""

from __future__ import annotations

__version__ = "0.1.0"
