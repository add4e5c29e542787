"""Load tests and serving benchmarks of the Triton deployment."""
