"""The simulators' errors: one typed exception with a closed set of reason codes.

SimulationError
 └── ScenarioError   a scenario file entry is invalid; names the file position (`where`)

Reason codes: `invalid_population` (member count, days), `invalid_mix` (profile or risk weights),
`invalid_option` (a share, rate, speed or time out of range), `invalid_scenario` (a scenario entry),
`unknown_member`, `unknown_device` (a scenario names someone the population does not have),
`outside_run` (a scenario time before the start or after the end of the run).
"""

from __future__ import annotations

from typing import Final, Literal

Reason = Literal[
    "invalid_population", "invalid_mix", "invalid_option", "invalid_scenario",
    "unknown_member", "unknown_device", "outside_run",
]  # fmt: skip
REASONS: Final[frozenset[str]] = frozenset(Reason.__args__)  # type: ignore[attr-defined]


class SimulationError(ValueError):
    """The simulation cannot run as asked. `reason` is one of `REASONS`."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason: Reason = reason
        super().__init__(message)


class ScenarioError(SimulationError):
    def __init__(self, reason: Reason, where: str, message: str) -> None:
        self.where = where
        super().__init__(reason, f"{where}: {message}")
