"""Test helpers that ship with edgebot (tiny deterministic models for real llama.cpp tests)."""
