"""uqmerge: merge multimodal LLMs fine-tuned from one base, with uncertainty-guided selection."""

__version__ = "0.3.0"
