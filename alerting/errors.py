"""Typed errors of the time-driven alerting modules (scheduler, paging, nudges, outreach).

AlertingError
 ├── OutreachRejected   an outreach record the console sent is invalid (reason code + field)
 ├── ContentError       the education-content or paging YAML is invalid (file + path); the
 │                      scheduler refuses to start rather than send a broken text
 └── DeliveryUnavailable the MQTT broker could not take a member message (retried next tick)

A provider that refuses a page is not an exception: it is a `Delivery` with its status, recorded
in `pages` / `notifications` (a failed page is a fact to keep, not a crash).
"""

from __future__ import annotations

from typing import Final, Literal

OutreachReason = Literal["unknown_mode", "unknown_outcome", "negative_duration", "wrong_member",
                         "unknown_alert"]  # fmt: skip
OUTREACH_REASONS: Final[frozenset[str]] = frozenset(
    {"unknown_mode", "unknown_outcome", "negative_duration", "wrong_member", "unknown_alert"}
)


class AlertingError(Exception):
    pass


class OutreachRejected(AlertingError):  # noqa: N818 - a verdict on a console request
    def __init__(self, reason: OutreachReason, field: str, message: str) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {message} ({reason})")


class ContentError(AlertingError):
    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        super().__init__(f"{source}: {path}: {message}")


class DeliveryUnavailable(AlertingError):  # noqa: N818 - a state, as operators say it
    pass
