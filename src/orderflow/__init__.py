"""orderflow: take customer orders over HTTP and ship them concurrently."""

__version__ = "0.1.0"
__all__ = ["__version__"]
