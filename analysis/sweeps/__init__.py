"""Sweeps: the grid syntax and plan, tasks on Dask, the results log of a sweep folder and seed bands."""
