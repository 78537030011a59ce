"""Foundations every stage uses: the error type, files written atomically and read with bounds."""
