"""tempa.recipes: the recipe runner (schema, loader, plan, run directory, launcher, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tempa")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0+unknown"
