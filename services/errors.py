"""The typed errors of the services package. Lower-layer errors are translated at the boundary.

VigilError
 ├── ConfigurationError   settings or files an operator must fix (exit code 2)
 ├── StorageUnavailable   the database cannot be reached (exit code 3)
 ├── MigrationError       a migration failed or an applied one was edited (exit code 4)
 └── ImportFileError      an onboarding file entry is invalid; names the entry and field (exit 2)
"""

from __future__ import annotations


class VigilError(Exception):
    exit_code = 1


class ConfigurationError(VigilError):
    exit_code = 2


class StorageUnavailable(VigilError):  # noqa: N818 - a state, as operators say it
    exit_code = 3


class MigrationError(VigilError):
    exit_code = 4


class ImportFileError(ConfigurationError):
    def __init__(self, entry: str, field: str, message: str) -> None:
        self.entry = entry
        self.field = field
        super().__init__(f"{entry}: {field}: {message}" if field else f"{entry}: {message}")
