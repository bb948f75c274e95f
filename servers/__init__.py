"""First-party MCP servers (each one standalone: stdio and Streamable HTTP)."""
