"""Decision links: a person completes a deferred task from a link (docs/decisions.md)."""
