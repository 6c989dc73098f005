"""Project-wide plumbing with no project dependencies: input errors, command-line helpers, atomic output."""
from .cli import ArgumentParser, add_overwrite, describe_device, guarded
from .errors import ConfigError, check_choice, check_int, check_positive
from .io import check_out, output_dir, output_file, save_figure, write_csv, write_json, write_text
from .signals import Interrupted
from .version import __version__

__all__ = ["__version__", "ArgumentParser", "ConfigError", "Interrupted", "add_overwrite", "check_choice", "check_int", "check_out",
           "check_positive", "describe_device", "guarded", "output_dir", "output_file",
           "save_figure", "write_csv", "write_json", "write_text"]
