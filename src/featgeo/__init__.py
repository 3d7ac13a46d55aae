"""featgeo: the geometry of features inside language models."""

__version__ = "0.1.0"
