"""UQ-Merge model selection (Algorithm 1) and its guidance ablations."""
