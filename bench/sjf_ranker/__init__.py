"""The SJF length ranker: prompts, the data SmolLM2 generated for them, training."""
