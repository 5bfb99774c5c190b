"""Handlers that ship with the broker.

Load them with ``BROKER_HANDLERS='["handlers.seeds:router"]'``.
"""
