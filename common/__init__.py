"""Project-wide plumbing with no project dependencies: input errors, command-line helpers, atomic output."""
from common.cli import ArgumentParser, add_overwrite, describe_device, guarded
from common.errors import ConfigError, check_choice, check_int, check_positive
from common.io import check_out, output_dir, output_file, save_figure, write_csv, write_json, write_text
from common.signals import Interrupted
from common.version import __version__

__all__ = ["__version__", "ArgumentParser", "ConfigError", "Interrupted", "add_overwrite", "check_choice", "check_int", "check_out",
           "check_positive", "describe_device", "guarded", "output_dir", "output_file",
           "save_figure", "write_csv", "write_json", "write_text"]
