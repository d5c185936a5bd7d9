"""rbmem_tutorial: reducing memorisation in flow matching through Riemannian Bayesian inference.

The package follows the book chapter by chapter; see the README for the map.
"""

__version__ = "0.1.0"
