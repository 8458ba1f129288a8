"""The package version (one place; ``onfh_seg.__version__`` re-exports it, pyproject.toml repeats it)."""

__version__ = "0.1.0"
