"""A sweep from config to run folder: config → plan → executor → run loop → trainer → run folder."""
