"""The test suite; `tests.kit` is what tests and benchmarks share (fakes, peers, helpers)."""
