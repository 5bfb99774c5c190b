"""Run a console script under cProfile with a CPU clock, and save the stats on exit.

    python bench/cpu_profile.py OUT.prof SCRIPT [ARGS...]

``python -m cProfile`` times with the wall clock, which charges the time a process
sleeps in the event loop's poll to whichever frame is on the stack; a benchmark wants
CPU time.  ``time.process_time`` costs a system call per event, so profiled runs are
slower: read the shares.
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        pass
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
