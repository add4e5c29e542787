"""One-off measurements behind design choices (detector, crop constants, CPU runtimes); not part of the product."""
