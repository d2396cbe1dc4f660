"""HTTP server tests."""
