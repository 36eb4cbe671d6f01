"""The benchmark harness of issue 9: `make bench` (see bench/README.md)."""
