"""The README's "Try your handler locally" section, read and run as a handler author would.

The section's blocks are taken as written: the python block is the plugin (written to a
directory of the test's own, on no path but the one the README's command gives), the
``sh`` blocks run in ``bash`` with ``broker`` on the PATH. Only what a test must change is
changed, on the command itself: ``--port`` for a free port, a queue name unique per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cli import clean_env

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Try your handler locally"


def readme_section(title: str = SECTION) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def write_plugin(section: str, directory: Path) -> str:
    """The section's python block as the file its first comment names; its module name."""
    (code,) = blocks(section, "python")
    filename = re.match(r"# (\w+\.py)", code)
    assert filename, code
    (directory / filename.group(1)).write_text(code, encoding="utf-8")
    return filename.group(1).removesuffix(".py")


def author_env(**extra: str) -> dict[str, str]:
    """A shell's environment with the broker installed: ``broker`` on the PATH, no
    BROKER_* or AWS_* of this process."""
    bin_dir = str(Path(sys.executable).parent)
    return clean_env(PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), **extra)


def expected_endings(script: str) -> list[dict[str, Any]]:
    """The JSON each ``start … --wait`` line's comment says it prints."""
    return [
        json.loads(comment)
        for comment in re.findall(r"^broker local start .* --wait\s+# (\{.*\})$", script, re.M)
    ]


@dataclass(frozen=True)
class ScriptRun:
    returncode: int
    stdout: str
    stderr: str

    def endings(self) -> list[dict[str, Any]]:
        """What the ``start --wait`` commands printed: the JSON lines with a status (the
        broker's own log lines go to stderr)."""
        found = []
        for line in self.stdout.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and "status" in value:
                found.append(value)
        return found


def run_script(script: str, *, env: dict[str, str], cwd: Path, timeout_s: float) -> ScriptRun:
    """``script`` in ``bash -e``, in a process group of its own: whatever it left running
    (the ``broker run &`` of a failed script) is killed on the way out."""
    out, err = cwd / "script.out", cwd / "script.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            ["bash", "-e", "-c", script],
            env=env,
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return ScriptRun(returncode, out.read_text(), err.read_text())
