"""Helpers for tests and demos: tiny tokenizers trained in milliseconds (no downloads)."""
