"""Events, stats, metrics, the HTTP listeners, logging, tracing and token redaction."""
