"""sidecar: a service-mesh sidecar proxy built on trio."""

__version__ = "0.1.0"
__all__ = ["__version__"]
