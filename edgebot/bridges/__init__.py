"""Bridges: separate processes on the bus (serial, speech-in, speech-out), one shared supervisor."""
