"""Command-line client `ap` for the Agent Platform public API."""
