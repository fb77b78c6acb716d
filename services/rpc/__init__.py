"""Plumbing every service shares: settings, logging, errors, server bootstrap, database.

No business logic lives here; services talk to each other only through generated stubs.
"""
