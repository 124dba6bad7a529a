"""asv benchmarks of bwfast against bwfast.reference."""
