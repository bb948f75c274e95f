"""``python -m kontor.gateway serve [--host H] [--port P]``: run the gateway with uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

app = typer.Typer(help="The Kontor gateway.", no_args_is_help=True, add_completion=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="bind address (loopback unless you mean otherwise)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8700,
) -> None:
    """Serve every tenant's MCP endpoint, the authorization server and /health."""
    import uvicorn

    from kontor.gateway.app import build_app
    from kontor.gateway.config import GatewaySettings, get_gateway_settings
    from kontor.telemetry import configure_tracing

    configure_tracing("kontor-gateway")

    os.environ.setdefault("KONTOR_GATEWAY_HOST", host)
    os.environ.setdefault("KONTOR_GATEWAY_PORT", str(port))
    get_gateway_settings.cache_clear()
    settings = GatewaySettings(host=host, port=port)
    uvicorn.run(build_app(settings), host=host, port=port, log_level="warning", access_log=False)


@app.callback()
def _main() -> None:
    pass


if __name__ == "__main__":
    app()
