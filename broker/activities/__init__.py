"""Step Functions activities: the GetActivityTask poller and the per-task processor."""
