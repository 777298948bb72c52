"""Benchmarks: each runs the alternatives side by side and prints ratios; see RESULTS.md."""
