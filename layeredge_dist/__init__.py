"""LayerEdge: measure and shrink the tensors that cross the cuts of a model split across machines."""

__version__ = "0.1.0"
