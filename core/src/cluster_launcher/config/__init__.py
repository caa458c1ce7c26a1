"""Configuration: loading a role's config files and command-line options
(:mod:`.loader`, IPython.parallel 0.11–0.13 names translated on the way in),
and the generated config files of a new profile (:mod:`.profile`)."""

from .loader import build_config, check_names, config_files, known_classes, load_config_file, parse_overrides

__all__ = ["build_config", "check_names", "config_files", "known_classes", "load_config_file", "parse_overrides"]
