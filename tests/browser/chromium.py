"""Finding and launching the headless Chromium of the browser suite.

The browser is Debian's ``chromium`` package (``apt-get install chromium``; ``.ci/run``
installs it), driven by Playwright from PyPI with ``executable_path``: Playwright's own
browser download (``playwright install``) is never used.  ``CHROMIUM`` names another
binary.  ``chromium_problem()`` says, in one sentence, why the suite cannot run here, or
None.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Final

#: Debian's wrapper first (it reads /etc/chromium.d), then other distributions' names.
_NAMES: Final = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_problem() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the Python package playwright is not installed (make install brings it)"
    if chromium_path() is None:
        wanted = os.environ.get("CHROMIUM") or " or ".join(_NAMES)
        return f"no Chromium found ({wanted}): apt-get install chromium (.ci/run does)"
    return None


def required() -> bool:
    """Under CI a missing browser fails the suite instead of skipping it."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
