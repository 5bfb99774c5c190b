"""The consumers the benchmark runs, each as its own process (see bench/run.py)."""
