"""Helpers of the test suite, imported one way: `from tests.support.<module> import ...` (fixtures and hooks
stay in the conftest.py files)."""
