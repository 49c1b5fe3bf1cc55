"""Tuning tools: checks before training, LR range test, search, and reading a run's curves."""
