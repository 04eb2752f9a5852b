"""The console's typed errors; `coach_console.app` turns each into its page and status.

ConsoleError                       (status and a reason code from `Reason` travel with it)
 ├── LoginRequired         303     no live session: redirect to /login (anonymous, idle, expired)
 ├── Forbidden             403     role_required, csrf_failed, cross_origin, credential_required
 ├── NotFound              404     not_found: absent, or outside the person's scope (no oracle)
 ├── Conflict              409     alert_taken, alert_not_active, not_claimed
 └── InvalidInput          400     invalid_input (the message says which field and why)

Lower-layer errors are translated where they are caught: `alerting.lifecycle.AlertConflict`
becomes Conflict, `alerting.thresholds.OverrideRefused` becomes InvalidInput.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    LOGIN_REQUIRED = "login_required"
    ROLE_REQUIRED = "role_required"
    CREDENTIAL_REQUIRED = "credential_required"
    CSRF_FAILED = "csrf_failed"
    CROSS_ORIGIN = "cross_origin"
    NOT_FOUND = "not_found"
    ALERT_TAKEN = "alert_taken"
    ALERT_NOT_ACTIVE = "alert_not_active"
    NOT_CLAIMED = "not_claimed"
    INVALID_INPUT = "invalid_input"


class ConsoleError(Exception):
    status = 500

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class LoginRequired(ConsoleError):  # noqa: N818 - named as the HTTP verdict
    status = 303

    def __init__(self, next_path: str = "/") -> None:
        super().__init__(Reason.LOGIN_REQUIRED, "please sign in")
        self.next_path = next_path


class Forbidden(ConsoleError):  # noqa: N818 - named as the HTTP verdict
    status = 403


class NotFound(ConsoleError):  # noqa: N818 - named as the HTTP verdict
    status = 404

    def __init__(self, what: str = "page") -> None:
        super().__init__(Reason.NOT_FOUND, f"no such {what}, or not yours to see")


class Conflict(ConsoleError):  # noqa: N818 - named as the HTTP verdict
    status = 409


class InvalidInput(ConsoleError):  # noqa: N818 - named as the HTTP verdict
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(Reason.INVALID_INPUT, message)
