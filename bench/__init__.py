"""Benchmarks of the callback broker and the loopback AWS stub they run against."""
