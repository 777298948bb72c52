"""Constrained decoding: regex / JSON schema to an FSM index, vocabulary masks, jump-forward."""
