"""UQ-Merge end to end: run config, the Algorithm-1 runner with resume, and the run record."""
