"""Vision-language perturbation uncertainty (UQ) of MLLMs on multiple-choice data."""
