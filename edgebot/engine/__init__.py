"""The engine inside edgebotd: the worker thread, queue, sessions, thinking and the backends."""
