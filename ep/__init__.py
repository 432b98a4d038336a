"""Embedding Propagation (DESIGN.md §4): not implemented yet."""
