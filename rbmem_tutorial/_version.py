"""The package version (a leaf, so that the cache keys and run records read it without
importing the package itself)."""

__version__ = "0.1.0"
