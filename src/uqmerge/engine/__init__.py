"""Merge plan, streaming executor and sinks."""
