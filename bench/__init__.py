"""tripwire benchmarks: results are ratios against a baseline measured in the same run."""
