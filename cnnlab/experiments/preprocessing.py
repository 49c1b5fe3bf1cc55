"""Experiments of this module: filled in as they are built."""

EXPERIMENTS: list = []
