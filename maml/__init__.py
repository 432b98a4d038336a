"""MAML with the progressive evaluation mechanism (DESIGN.md §4)."""
