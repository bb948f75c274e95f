"""The server registry and marketplace. Built by the registry issue."""
