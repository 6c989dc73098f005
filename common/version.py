"""The project's version, defined once: pyproject.toml reads it (setuptools dynamic version), every program's
``--version`` prints it, and CITATION.cff repeats it (tests/packaging/test_packaging.py checks that they agree)."""
__version__ = "0.1.0"
