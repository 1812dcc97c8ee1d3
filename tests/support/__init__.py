"""Shared test helpers: tiny models, fixtures, servers and browsers (imported as ``support.<module>``)."""
