"""Matplotlib figures. Importing this package does not import matplotlib; each module does."""
