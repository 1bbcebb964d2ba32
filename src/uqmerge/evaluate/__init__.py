"""Evaluation of MLLMs: multiple-choice accuracy and open-ended exact match."""
