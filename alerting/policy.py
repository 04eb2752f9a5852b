"""Alerting policy: acknowledgement SLAs, cool-down, lateness, paging, per client.

Defaults below; a client's `alert_policy` JSON (clients.alert_policy) overrides any of them, e.g.
{"sla_minutes": {"critical": 2}, "cooldown_minutes": 60}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

DEFAULT_SLA_MINUTES: Final = {"critical": 3, "high": 30, "medium": 24 * 60, "low": 72 * 60}


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    #: Time to acknowledgement by tier (a coach claims the alert).
    sla_minutes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SLA_MINUTES))
    #: Retrospective alerts (late data) get their own, longer SLA.
    retrospective_sla_minutes: int = 8 * 60
    #: After a claimed critical alert, the first outreach is due within this.
    first_outreach_minutes: int = 5
    #: A resolved rule re-opens only after this, except for critical findings.
    cooldown_minutes: int = 30
    #: A reading received more than this after its effective time is late.
    late_after_minutes: int = 60
    #: Re-page the on-call coach this often until a critical alert is claimed.
    repage_minutes: int = 5
    #: Unreachable after a critical low: this many failed outreach attempts within the window.
    unreachable_attempts: int = 2
    unreachable_window_minutes: int = 15

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> AlertPolicy:
        base = cls()
        if not doc:
            return base
        sla = dict(base.sla_minutes)
        sla.update({k: int(v) for k, v in (doc.get("sla_minutes") or {}).items() if k in sla})
        kw: dict[str, Any] = {"sla_minutes": sla}
        for name in (
            "retrospective_sla_minutes", "first_outreach_minutes", "cooldown_minutes",
            "late_after_minutes", "repage_minutes", "unreachable_attempts",
            "unreachable_window_minutes",
        ):  # fmt: skip
            if name in doc:
                kw[name] = int(doc[name])
        return cls(**kw)

    def sla(self, tier: str, retrospective: bool) -> timedelta:
        if retrospective:
            return timedelta(minutes=self.retrospective_sla_minutes)
        return timedelta(minutes=self.sla_minutes[tier])

    @property
    def cooldown(self) -> timedelta:
        return timedelta(minutes=self.cooldown_minutes)

    @property
    def late_after(self) -> timedelta:
        return timedelta(minutes=self.late_after_minutes)
