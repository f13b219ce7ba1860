"""edgebot: an offline assistant daemon for small Linux boards."""

__version__ = "0.1.0"
