"""Serving benchmarks: throughput, latency, cold start and memory, side by side in one run."""
