"""Minimal SQL seeding for pipeline tests (the onboarding importer has its own tests)."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg


async def seed_member(
    pool: asyncpg.Pool,
    member_id: str = "m-1",
    devices: dict[str, str] | None = None,
    *,
    client_id: str = "acme",
    assigned_from: datetime | None = None,
    assigned_to: datetime | None = None,
    in_service_from: date | None = None,
    timezone: str = "America/Chicago",
) -> None:
    """A client, one member and their devices ({device_id: kind}), assigned from `assigned_from`."""
    devices = devices if devices is not None else {"gm-1": "glucose_meter"}
    await pool.execute(
        "INSERT INTO clients (id, name, timezone, currency) VALUES ($1, 'Acme', $2, 'USD') "
        "ON CONFLICT DO NOTHING",
        client_id,
        timezone,
    )
    await pool.execute(
        "INSERT INTO members (id, client_id, name, birth_date, timezone) "
        "VALUES ($1, $2, 'Test Member', '1960-01-01', $3)",
        member_id,
        client_id,
        timezone,
    )
    for device_id, kind in devices.items():
        await pool.execute(
            "INSERT INTO devices (id, kind, in_service_from) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            device_id,
            kind,
            in_service_from,
        )
        await pool.execute(
            "INSERT INTO device_assignments (device_id, member_id, assigned_from, assigned_to) "
            "VALUES ($1, $2, $3, $4)",
            device_id,
            member_id,
            assigned_from,
            assigned_to,
        )
