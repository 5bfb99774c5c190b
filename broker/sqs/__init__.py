"""SQS: the receive loops, the message processor, envelopes, deletes, dead letters and redrive."""
