"""The local bus: typed messages, the one JSON-lines codec, the hub in edgebotd and the client."""
