"""asv benchmarks of lemur (see bench/README.md)."""
