"""Command line interface (``layeredge``)."""
