"""What the decision settings must hold for the routes registered, checked at start-up.

``Broker`` construction and ``broker check`` (through ``service.configuration_problems``)
refuse a ``decisions=True`` route without keys and a base URL, a ``notify=True`` route
without a topic, and a key that does not parse, each naming its setting; nothing here
prints or logs a key.
"""

from __future__ import annotations

from broker.core.errors import ConfigError
from broker.core.router import Router
from broker.core.settings import ENV_PREFIX, BrokerSettings
from broker.decisions.links import DecisionKeys, LinkCodec

__all__ = ["decision_codec", "decision_problems"]


def decision_problems(settings: BrokerSettings, router: Router) -> list[ConfigError]:
    problems: list[ConfigError] = []
    deciding = sorted(route.message_type for route in router if route.options.decisions)
    notifying = sorted(route.message_type for route in router if route.options.notify)
    if deciding:
        wanted = f"handler type(s) {router.describe(deciding)} have decisions=True"
        if not settings.decision_keys:
            problems.append(
                ConfigError(
                    f"{ENV_PREFIX}DECISION_KEYS: not set, and {wanted}; set a JSON list of "
                    f"keys (`broker decisions keygen` prints one){router.plugin_note(deciding)}"
                )
            )
        if not settings.decision_base_url:
            problems.append(
                ConfigError(
                    f"{ENV_PREFIX}DECISION_BASE_URL: not set, and {wanted}; set the public "
                    f"URL in front of the decision listener{router.plugin_note(deciding)}"
                )
            )
    if notifying and not settings.decision_topic:
        problems.append(
            ConfigError(
                f"{ENV_PREFIX}DECISION_TOPIC: not set, and handler type(s) "
                f"{router.describe(notifying)} have notify=True; set the SNS topic "
                f"(name or ARN){router.plugin_note(notifying)}"
            )
        )
    if settings.decision_keys:
        try:
            DecisionKeys.parse([key.get_secret_value() for key in settings.decision_keys])
        except ConfigError as exc:
            problems.append(exc)
    return problems


def decision_codec(settings: BrokerSettings) -> LinkCodec | None:
    """The link codec when keys are configured (checked by ``decision_problems``)."""
    if not settings.decision_keys:
        return None
    keys = DecisionKeys.parse([key.get_secret_value() for key in settings.decision_keys])
    return LinkCodec(keys, settings.decision_base_url or "")
