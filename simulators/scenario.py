"""Scenario files: exact readings and device faults scripted into a simulation (docs/simulators.md).

YAML (a mapping with `events:` and optional `background:`, or just a list of events) or JSONL
(one event object per line; a line `{"background": false}` sets the option). Examples:

    - {member: m-0003, day: 1, at: "07:10", glucose: 52, meal: fasting}
    - {member: m-0003, day: 1, at: "07:25", glucose: 88}
    - {member: m-0010, at: "2026-03-02T21:05:00-06:00", blood_pressure: "186/122", pulse: 88}
    - {member: m-0011, day: 3, at: "06:40", weight: 212.4}
    - {device: gm-0005, day: 2, at: "08:00", offline_hours: 30}
    - {device: bp-0010, day: 4, at: "00:00", clock: reset}
    - {device: sc-0011, clock_drift_ppm: 500}
    - {device: gm-0003, duplicate_rate: 0.2}

`day` counts from 1, the calendar date of the run's start (as written, in its own offset); `at`
is the member's local time on that date, or a full RFC 3339 time (then without `day`). Parsing
is pure and checks the shape of each entry; `simulators.fleet` resolves members, devices and
times against the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import yaml

from simulators.errors import ScenarioError
from simulators.member import Kind

FaultAction = Literal["offline", "clock_reset", "clock_drift", "duplicates"]

_READING_KINDS: Final[dict[str, Kind]] = {
    "glucose": "glucose", "blood_pressure": "blood_pressure", "weight": "weight",
}  # fmt: skip
_DEFAULT_UNIT: Final[dict[str, str]] = {"glucose": "mg/dL", "blood_pressure": "mmHg",
                                        "weight": "lb"}  # fmt: skip
_READING_KEYS: Final = frozenset(
    {"member", "device", "day", "at", "unit", "meal", "pulse", "flags", *_READING_KINDS}
)
_FAULT_KEYS: Final[dict[str, FaultAction]] = {
    "offline_hours": "offline", "clock": "clock_reset", "clock_drift_ppm": "clock_drift",
    "duplicate_rate": "duplicates",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class When:
    """A day of the run and a local clock time, or an instant (naive: the member's local time)."""

    day: int = 1
    clock: time | None = None
    instant: datetime | None = None

    def resolve(self, zone: ZoneInfo, start: datetime) -> datetime:
        """The instant; day 1 is the calendar date of `start` as written (in its own offset),
        and the clock time is the member's local time on that date."""
        if self.instant is not None:
            if self.instant.tzinfo is None:
                return self.instant.replace(tzinfo=zone).astimezone(UTC)
            return self.instant.astimezone(UTC)
        local_day = start.date() + timedelta(days=self.day - 1)
        return datetime.combine(local_day, self.clock or time(), zone).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ScriptedReading:
    where: str
    member: str
    device: str | None  # None: the member's device of this kind
    when: When
    kind: Kind
    fields: tuple[tuple[str, Any], ...]  # reading fields after measured_at


@dataclass(frozen=True, slots=True)
class DeviceFault:
    where: str
    device: str
    when: When | None  # None: from the start (drift, duplicates)
    action: FaultAction
    amount: float  # hours offline, ppm, duplicate rate; 0 for a clock reset


@dataclass(frozen=True, slots=True)
class Scenario:
    background: bool = True  # the population's own readings besides the scripted ones
    readings: tuple[ScriptedReading, ...] = ()
    faults: tuple[DeviceFault, ...] = ()


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError("invalid_scenario", str(path), f"cannot read: {exc}") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return parse_jsonl(text, str(path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ScenarioError("invalid_scenario", where, "not valid YAML") from None
    return parse_document(data, str(path))


def parse_jsonl(text: str, source: str) -> Scenario:
    background = True
    entries: list[tuple[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            obj = json.loads(line)
        except ValueError:
            raise ScenarioError("invalid_scenario", where, "not a JSON object") from None
        if isinstance(obj, dict) and set(obj) == {"background"}:
            background = _bool(obj["background"], where, "background")
            continue
        entries.append((where, obj))
    return _scenario(background, entries)


def parse_document(data: object, source: str) -> Scenario:
    background = True
    events: object = data
    if data is None:
        events = []
    elif isinstance(data, dict):
        unknown = set(data) - {"background", "events"}
        if unknown:
            raise ScenarioError("invalid_scenario", source, f"unknown keys {sorted(unknown)}")
        background = _bool(data.get("background", True), source, "background")
        events = data.get("events") or []
    if not isinstance(events, list):
        raise ScenarioError("invalid_scenario", source, "expected a list of events")
    return _scenario(background, [(f"{source} events[{i}]", e) for i, e in enumerate(events)])


def _scenario(background: bool, entries: list[tuple[str, object]]) -> Scenario:
    readings: list[ScriptedReading] = []
    faults: list[DeviceFault] = []
    for where, entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise ScenarioError("invalid_scenario", where, "an event is a mapping of fields")
        if "member" in entry:
            readings.append(_reading(entry, where))
        elif "device" in entry:
            faults.append(_fault(entry, where))
        else:
            raise ScenarioError("invalid_scenario", where, "an event needs `member` or `device`")
    return Scenario(background, tuple(readings), tuple(faults))


def _reading(entry: dict[str, Any], where: str) -> ScriptedReading:
    unknown = set(entry) - _READING_KEYS
    if unknown:
        raise ScenarioError("invalid_scenario", where, f"unknown fields {sorted(unknown)}")
    kinds = [k for k in _READING_KINDS if k in entry]
    if len(kinds) != 1:
        raise ScenarioError(
            "invalid_scenario",
            where,
            "a reading needs exactly one of glucose, blood_pressure, weight",
        )
    kind = _READING_KINDS[kinds[0]]
    raw = entry[kind]
    unit = entry.get("unit", _DEFAULT_UNIT[kind])
    if not isinstance(unit, str):
        raise ScenarioError("invalid_scenario", where, "unit must be a string")
    fields: list[tuple[str, Any]] = []
    flags = entry.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ScenarioError("invalid_scenario", where, "flags must be a list of strings")
    if kind == "glucose":
        if raw in ("HI", "LO"):
            flags = [*flags, raw]
        else:
            fields.append(("value", _number(raw, where, "glucose")))
        fields.append(("unit", unit))
        if "meal" in entry:
            fields.append(("meal", _string(entry["meal"], where, "meal")))
    elif kind == "blood_pressure":
        systolic, diastolic = _pressure(raw, where)
        fields += [("systolic", systolic), ("diastolic", diastolic)]
        if "pulse" in entry:
            fields.append(("pulse", _number(entry["pulse"], where, "pulse")))
        fields.append(("unit", unit))
    else:
        fields += [("value", _number(raw, where, "weight")), ("unit", unit)]
    if ("meal" in entry and kind != "glucose") or ("pulse" in entry and kind != "blood_pressure"):
        raise ScenarioError("invalid_scenario", where, f"field not allowed for a {kind} reading")
    if flags:
        fields.append(("flags", flags))
    device = entry.get("device")
    return ScriptedReading(
        where, _string(entry["member"], where, "member"),
        None if device is None else _string(device, where, "device"),
        _when(entry, where, required=True), kind, tuple(fields),
    )  # fmt: skip


def _fault(entry: dict[str, Any], where: str) -> DeviceFault:
    actions = [k for k in _FAULT_KEYS if k in entry]
    unknown = set(entry) - {"device", "day", "at", *_FAULT_KEYS}
    if unknown or len(actions) != 1:
        raise ScenarioError(
            "invalid_scenario", where,
            "a device event has `device`, optional `day`/`at`, and one of "
            + ", ".join(_FAULT_KEYS),
        )  # fmt: skip
    key = actions[0]
    action = _FAULT_KEYS[key]
    amount = 0.0
    if action == "clock_reset":
        if entry[key] != "reset":
            raise ScenarioError("invalid_scenario", where, "clock: the only action is `reset`")
    else:
        amount = float(_number(entry[key], where, key))
        if action in ("offline", "duplicates") and not amount > 0:
            raise ScenarioError("invalid_scenario", where, f"{key} must be above 0")
        if action == "duplicates" and amount > 1:
            raise ScenarioError("invalid_scenario", where, "duplicate_rate is at most 1")
    timed = action in ("offline", "clock_reset")
    when = _when(entry, where, required=timed) if timed or "at" in entry else None
    if when is not None and not timed:
        raise ScenarioError("invalid_scenario", where, f"{key} applies to the whole run: no time")
    return DeviceFault(where, _string(entry["device"], where, "device"), when, action, amount)


def _when(entry: dict[str, Any], where: str, *, required: bool) -> When:
    at = entry.get("at")
    day = entry.get("day", 1)
    if isinstance(day, bool) or not isinstance(day, int) or day < 1:
        raise ScenarioError("invalid_scenario", where, "day counts from 1")
    if at is None:
        if required:
            raise ScenarioError("invalid_scenario", where, "`at` is required")
        return When(day)
    if isinstance(at, datetime):  # an unquoted YAML timestamp
        if "day" in entry:
            raise ScenarioError("invalid_scenario", where, "give `day` with a clock time only")
        return When(instant=at)
    if isinstance(at, int) and not isinstance(at, bool):
        # YAML 1.1 reads an unquoted 7:10 as the sexagesimal number 430.
        raise ScenarioError("invalid_scenario", where, 'quote clock times: at: "07:10"')
    if not isinstance(at, str):
        raise ScenarioError("invalid_scenario", where, "`at` is HH:MM[:SS] or an RFC 3339 time")
    if "T" in at or " " in at.strip():
        if "day" in entry:
            raise ScenarioError("invalid_scenario", where, "give `day` with a clock time only")
        try:
            return When(instant=datetime.fromisoformat(at))
        except ValueError:
            raise ScenarioError("invalid_scenario", where, f"`at` {at!r} is not a time") from None
    try:
        return When(day, time.fromisoformat(at))
    except ValueError:
        raise ScenarioError("invalid_scenario", where, f"`at` {at!r} is not HH:MM[:SS]") from None


def _pressure(raw: object, where: str) -> tuple[int | float, int | float]:
    if isinstance(raw, str) and raw.count("/") == 1:
        high, low = raw.split("/")
        try:
            return _as_number(high), _as_number(low)
        except ValueError:
            pass
    if isinstance(raw, dict) and set(raw) == {"systolic", "diastolic"}:
        return (_number(raw["systolic"], where, "systolic"),
                _number(raw["diastolic"], where, "diastolic"))  # fmt: skip
    raise ScenarioError("invalid_scenario", where,
                        'blood_pressure is "SYS/DIA" or {systolic, diastolic}')  # fmt: skip


def _as_number(text: str) -> int | float:
    text = text.strip()
    return int(text) if text.isdigit() else float(text)


def _number(value: object, where: str, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError("invalid_scenario", where, f"{name} must be a number")
    return value


def _string(value: object, where: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ScenarioError("invalid_scenario", where, f"{name} must be a non-empty string")
    return value


def _bool(value: object, where: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError("invalid_scenario", where, f"{name} must be true or false")
    return value
