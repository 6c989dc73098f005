"""Multi-stage experiments on the flow: stages, stop rules, evaluation sets, experiment files; the program
``python -m dynamics.experiment`` is ``__main__``."""
