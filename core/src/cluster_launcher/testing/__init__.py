"""Helpers for testing cluster-launcher and its plugins (imported only by tests)."""
