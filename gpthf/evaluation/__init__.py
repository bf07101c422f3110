"""Evaluating checkpoints: bits per byte and perplexity (more tasks: see the issues)."""
