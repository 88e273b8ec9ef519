"""Command line: `mupath` (typer + rich)."""
