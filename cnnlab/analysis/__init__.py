"""Model analysis: per-layer shapes, memory, parameters, MACs and receptive fields."""

from cnnlab.analysis.receptive import ReceptiveField, receptive_field
from cnnlab.analysis.summary import CONVENTIONS, LayerRow, Summary, summary

__all__ = ["CONVENTIONS", "LayerRow", "ReceptiveField", "Summary", "receptive_field", "summary"]
