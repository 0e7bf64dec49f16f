"""Quality of a model: perplexity, KL divergence, multiple choice, and the comparison of quantizations."""
