"""Backends of the interpreter: the local Runtime, the native HTTP API, OpenAI-compatible APIs."""
