"""Render the settings reference (docs/settings.md) from the settings model itself.

``python -m broker.local.settings_doc > docs/settings.md``; a test fails when the file drifts.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.fields import FieldInfo

from broker.core.settings import ENV_PREFIX, ActivitySettings, BrokerSettings, QueueSettings

__all__ = ["render"]

_AWS_NAMES = {
    "aws_region": "`AWS_REGION` / `AWS_DEFAULT_REGION`",
    "aws_endpoint_url": "`AWS_ENDPOINT_URL`",
}


def render() -> str:
    lines = [
        "# Settings reference",
        "",
        "Generated from `broker/core/settings.py` by `python -m broker.local.settings_doc`; "
        "do not edit by hand.",
        "",
        "Sources, highest priority first: environment variables, a `.env` file in the "
        "working directory, the config file given with `broker --config FILE` (TOML or JSON; "
        "keys are the field names, optionally under a `[broker]` table), then the defaults. "
        "Lists and objects in environment variables are JSON.",
        "",
        "Names are checked: an unknown `BROKER_*` environment variable or `.env` key, or "
        "an unknown key of the config file (or of a queue or activity in it), stops the "
        "start (exit 2) naming it and the closest setting, e.g. `BROKER_CONCURENCY: unknown "
        "setting (did you mean BROKER_CONCURRENCY?)`. Every settings error says where the "
        "value came from: the variable (`BROKER_CONCURRENCY (in .env): …` for `.env`), or "
        "the config file and its key, a list's entries counted from 1 and named, e.g. "
        "`broker.toml: concurency: unknown setting (did you mean concurrency?)`, "
        "`broker.toml: concurrency: Input should be a valid integer … (got 'lots')`, "
        "`broker.toml: queues, entry 3 ('orders'), key default_hander: unknown key (did you "
        "mean default_handler?)`; a variable that is not valid JSON keeps the parser's "
        "position (`BROKER_QUEUES: cannot parse the value (lists and objects are JSON): "
        "Expecting value: line 1 column 11 (char 10)`). Other programs' variables, in the "
        "environment or in a "
        "shared `.env`, are ignored. Let through although they start with `BROKER_`: the "
        "variables Kubernetes writes into every pod for a Service named `broker` "
        "(`BROKER_SERVICE_HOST`, `BROKER_SERVICE_PORT*`, `BROKER_PORT_<port>_<proto>*`, and "
        "`BROKER_PORT` when its value is a `tcp://` / `udp://` / `sctp://` address).",
        "",
        "## Broker",
        "",
        "| environment variable | field | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, info in BrokerSettings.model_fields.items():
        env = _AWS_NAMES.get(name, f"`{ENV_PREFIX}{name.upper()}`")
        lines.append(f"| {env} | `{name}` | {_default(info)} | {info.description or ''} |")
    lines += [
        "",
        "## Per queue (objects in `BROKER_QUEUES`)",
        "",
        'A bare string in the list is short for `{"name": "..."}`.',
        "",
        "| field | default | meaning |",
        "|---|---|---|",
    ]
    for name, info in QueueSettings.model_fields.items():
        lines.append(f"| `{name}` | {_default(info)} | {info.description or ''} |")
    lines += [
        "",
        "## Per activity (objects in `BROKER_ACTIVITIES`)",
        "",
        "Each needs a `handler`, a `type_field`, or both (the field first, the handler as "
        "the fallback). See docs/activities.md.",
        "",
        "| field | default | meaning |",
        "|---|---|---|",
    ]
    for name, info in ActivitySettings.model_fields.items():
        lines.append(f"| `{name}` | {_default(info)} | {info.description or ''} |")
    return "\n".join(lines) + "\n"


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value: Any = info.get_default(call_default_factory=True)
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


if __name__ == "__main__":
    print(render(), end="")
