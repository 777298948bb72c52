"""Attention over the paged KV pool: one interface, a torch implementation (CPU and reference)."""
