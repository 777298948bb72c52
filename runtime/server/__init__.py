"""The HTTP server: SGLang's native API, the OpenAI-compatible API, metrics and the CLI."""
