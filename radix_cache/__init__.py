"""KV memory: slot pools, the request-to-token table and the radix tree of token prefixes."""
