"""``python -m broker`` is the ``broker`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
