"""The web chat host and agent loop. Built by the host issue."""
