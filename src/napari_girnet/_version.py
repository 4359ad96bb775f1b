"""The package version (a module with no imports, so any layer may import it)."""

__version__ = "0.1.0"
