"""The benchmarks behind the README and docs/figures, each run from the repository root as a module."""
