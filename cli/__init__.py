"""Command-line apps (typer), thin wiring over train/export/runtime."""
