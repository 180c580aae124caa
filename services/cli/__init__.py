"""The ``vlm`` command line: the product's front door (typer and rich live here only)."""

from services.cli.app import app, main

__all__ = ["app", "main"]
