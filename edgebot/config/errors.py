"""``ConfigError``: a configuration mistake. Its own module so that the loader and the owners of
sections it delegates to (``edgebot.actions.registry``) share it without importing each other."""


class ConfigError(Exception):
    """A configuration mistake; the message names the key, the source and what is allowed."""
