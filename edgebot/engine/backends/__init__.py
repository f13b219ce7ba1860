"""Backends that generate tokens for the engine: llama.cpp (CPU), RKLLM (RK3588 NPU), a remote server."""
