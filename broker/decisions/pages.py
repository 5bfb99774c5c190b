"""The decision endpoint's HTML: small, static, no script, every task text escaped.

GET shows what the button does and when the link expires; only the form's POST decides
(a mail scanner that opens every link, or runs its scripts, decides nothing).
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Final

from broker.decisions.links import DecisionLink

__all__ = ["confirm_page", "message_page"]

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;"
    "color:#222}h1{font-size:1.4em}.details{white-space:pre-wrap;background:#f4f4f4;"
    "padding:.8em;border-radius:4px}button{font-size:1.1em;padding:.5em 1.5em;cursor:pointer}"
    ".approve{background:#1a7f37;color:#fff;border:0}.reject{background:#b42318;color:#fff;"
    "border:0}.small{color:#666;font-size:.9em}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def confirm_page(link: DecisionLink) -> str:
    """The page a link opens to: what is decided, and one button that decides it."""
    verb = "Approve" if link.action == "approve" else "Reject"
    subject = link.subject or "A workflow task is waiting for your decision"
    effect = (
        "Pressing the button approves the request: the workflow goes on."
        if link.action == "approve"
        else "Pressing the button rejects the request: the workflow's task fails "
        f"with {escape(link.error or '')}."
    )
    details = f'<p class="details">{escape(link.details)}</p>' if link.details else ""
    body = (
        f"<h1>{verb}: {escape(subject)}</h1>{details}<p>{effect}</p>"
        # No action attribute: the form posts to this very URL (form-action 'self').
        f'<form method="post"><button type="submit" class="{link.action}">{verb}</button>'
        "</form>"
        f'<p class="small">Opening this page decided nothing. The link expires '
        f"{_when(link.expires_at)}; the first decision made counts.</p>"
    )
    return _page(f"{verb}: {subject}", body)


def message_page(title: str, text: str) -> str:
    """Every other answer: decided, refused, expired, unavailable."""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(text)}</p>")
