"""The OpenAI-compatible HTTP API of edgebotd (``[http]``): a sibling of ``dispatch`` that turns
requests into engine jobs on the same queue. ``chat`` parses and shapes the JSON and needs no
third-party package; ``server`` needs aiohttp (the ``http`` extra) and is imported only when
``[http] enabled`` is true."""
