"""Server-rendered pages: the Jinja2 environment and the filters the templates share.

Autoescaping is on for every template and undefined names raise (StrictUndefined), so a template
typo is a test failure rather than an empty cell. Times are rendered as `<time datetime=...>`
in UTC; console.js shows them in the viewer's zone, and member-local times are labelled as such.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from coach_console.queue import rule_label
from coach_console.work import (
    FOLLOWUP_MINUTES,
    OUTREACH_MODES,
    OUTREACH_OUTCOMES,
    RESOLVE_OUTCOMES,
)

TIER_LABELS: Final = {"critical": "Critical", "high": "High", "medium": "Medium", "low": "Low"}
MESSAGES: Final = {
    "claimed": "Alert claimed: it is yours until you resolve or hand it over.",
    "note": "Note saved.",
    "outreach": "Outreach recorded.",
    "followup": "Recheck timer set: the alert comes back to you when it is due.",
    "resolved": "Alert resolved.",
    "handoff": "Your claimed alerts were handed over.",
    "care_plan": "Care plan updated.",
    "signed_out": "You are signed out.",
    "idle": "You were signed out after a period of inactivity.",
}


def _time(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> Markup:
    if value is None:
        return Markup("&ndash;")
    utc = value.astimezone(UTC)
    return Markup('<time datetime="{iso}" data-local>{text} UTC</time>').format(
        iso=utc.isoformat(), text=utc.strftime(fmt)
    )


def _local(value: datetime | None, zone: str) -> str:
    if value is None:
        return "–"
    return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | Decimal | None, digits: int = 0) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


class Pages:
    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            time=_time, local=_local, pct=_pct, num=_num, duration=_duration, rule=rule_label,
            tier=lambda t: TIER_LABELS.get(t, t),
            mode=lambda m: OUTREACH_MODES.get(m, m),
            outreach_outcome=lambda o: OUTREACH_OUTCOMES.get(o, o),
            outcome=lambda o: RESOLVE_OUTCOMES.get(o, o) if o else "–",
        )  # fmt: skip
        self.env.globals.update(
            OUTREACH_MODES=OUTREACH_MODES, OUTREACH_OUTCOMES=OUTREACH_OUTCOMES,
            RESOLVE_OUTCOMES=RESOLVE_OUTCOMES, FOLLOWUP_MINUTES=FOLLOWUP_MINUTES,
        )  # fmt: skip

    def render(
        self, request: Request, template: str, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        session = getattr(request.state, "session", None)
        message = MESSAGES.get(request.query_params.get("msg", ""))
        base = {
            "request_path": request.url.path,
            "staff": session.staff if session and not session.mfa_pending else None,
            "csrf": session.csrf_token if session else "",
            "message": message,
            "idle_seconds": int(request.state.console_settings.idle_timeout.total_seconds()),
        }
        html = self.env.get_template(template).render(**base, **ctx)
        return HTMLResponse(html, status_code=status)

    def fragment(self, template: str, **ctx: Any) -> str:
        return self.env.get_template(template).render(**ctx)
