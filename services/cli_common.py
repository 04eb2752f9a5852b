"""What every `vigil` command module shares: settings from the environment and stderr logging."""

from __future__ import annotations

import logging
import sys

import typer

from services.settings import Settings

EXIT_CONFIG = 2


def load_settings() -> Settings:
    """VIGIL_* settings, or exit 2 with the reason (a configuration error is the operator's)."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        typer.echo(f"vigil: configuration error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


def setup_logging(settings: Settings) -> None:
    """Logs go to stderr; stdout carries only a command's requested output."""
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
