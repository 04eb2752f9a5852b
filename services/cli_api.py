"""`vigil api`: serve the member app API over HTTP (uvicorn).

Registered in services/cli.py as a Typer command. Settings are read here, when the command runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from services.settings import Settings


def api(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on")] = 8080,
) -> None:
    """Serve the member app API: signup, readings from the app, the member's own data.

    Listens on 127.0.0.1:8080 unless told otherwise; put a TLS-terminating proxy in front of it.
    Token lifetime, signup rate limit and body limits come from VIGIL_API_* variables
    (services/api/settings.py). A database that cannot be reached at startup exits with code 3.
    """
    import uvicorn

    from services.api.app import create_app
    from services.api.settings import ApiSettings

    try:
        settings = Settings()
        api_settings = ApiSettings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"vigil: configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # uvicorn exits with code 3 when the lifespan (opening the pool) fails, which is also
    # Vigil's "database unreachable" code. Access logs show paths and query strings only: no
    # route puts member data in either.
    uvicorn.run(
        create_app(settings, api_settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the logging configured above
        server_header=False,
    )
