"""Project-wide plumbing with no project dependencies: input errors, command-line helpers, atomic output."""
from .cli import ArgumentParser, describe_device, guarded
from .errors import ConfigError, check_choice, check_int, check_positive
from .io import output_dir, save_figure, write_csv, write_json, write_text

__all__ = ["ArgumentParser", "ConfigError", "check_choice", "check_int", "check_positive", "describe_device",
           "guarded", "output_dir", "save_figure", "write_csv", "write_json", "write_text"]
