"""``python -m bnorder``: the same command as ``bnorder``."""

from bnorder.cli.app import app

if __name__ == "__main__":  # worker processes are spawned and import this module again
    app(prog_name="bnorder")
