"""Configuration: one schema (``schema``) and one layered loader (``loader``)."""

from edgebot.config.loader import ConfigError, load_config
from edgebot.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config"]
