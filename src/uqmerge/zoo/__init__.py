"""Miniature MLLM zoo: synthetic vision-language tasks and tiny LLaVA experts."""
