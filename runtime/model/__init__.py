"""The model stage: configuration, weights (HF, GGUF, dummy), the models and their runner."""
