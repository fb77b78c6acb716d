"""Support code for development and tests: embedded Postgres and the deterministic dev model."""
