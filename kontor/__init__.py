"""Kontor: a tenant-aware mesh of MCP servers. This package is the small shared core."""

__version__ = "0.1.0"
