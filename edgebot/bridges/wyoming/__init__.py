"""edgebot-wyoming: edgebot as a Wyoming service for Home Assistant."""
