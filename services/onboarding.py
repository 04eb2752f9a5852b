"""The onboarding importer behind `vigil import FILE`: clients, contracts, coaches, members, care
plans, enrollments and devices from one YAML or JSON file. The format is docs/onboarding.md.

Every check runs before the first write:

1. read: the file -> plain data (YAML through a SafeLoader that refuses duplicate keys; a `.json`
   file as JSON with exact decimals);
2. parse: each entry -> the domain models of services.domain.organisation, then the checks across
   entries of the file (duplicate ids, one kind per device);
3. apply, in ONE transaction under an advisory lock: load what is stored for the file's ids, check
   references and intervals against it, then write only the rows that differ, so that importing
   the same file again writes nothing. The schema's constraints are the backstop; their errors are
   translated to the same `ImportFileError(entry, field, message)`.

Merge rule: a field the file states is written; an omitted optional field keeps its stored value,
or takes its documented default when the record is created. Nothing is deleted: rows the file does
not mention stay as they are. (Re-importing an old file must not re-consent a member, reopen an
ended enrollment or reactivate a revoked device.)

PHI: names, phones, birth dates and emergency contacts never reach a log line or an error message.
Errors name entries by position and id; logs carry counts only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import yaml
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from services.domain.organisation import Client, Coach, Device, Member
from services.errors import ConfigurationError, ImportFileError, StorageUnavailable

# libyaml's parser when PyYAML was built with it: 5x faster on a file of thousands of members.
# Construction stays in Python either way (the loader below), so the result is the same.
try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

log = logging.getLogger(__name__)

SECTIONS: Final = ("clients", "coaches", "members")
ENTITIES: Final = (
    "clients", "contracts", "coaches", "members", "care_plans", "enrollments", "devices",
    "device_assignments",
)  # fmt: skip
#: pg_advisory_xact_lock key ("VIGIL" + 1): two imports never interleave their read-compare-write.
LOCK_KEY: Final = 0x5649474C01

Outcome = Literal["created", "updated", "unchanged"]
Row = dict[str, Any]
Conn = PoolConnectionProxy
M = TypeVar("M", bound=BaseModel)


# -- summary ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(slots=True)
class ImportSummary:
    tallies: dict[str, Tally] = field(default_factory=lambda: {e: Tally() for e in ENTITIES})

    def add(self, entity: str, outcome: Outcome) -> None:
        tally = self.tallies[entity]
        if outcome == "created":
            tally.created += 1
        elif outcome == "updated":
            tally.updated += 1
        else:
            tally.unchanged += 1

    @property
    def written(self) -> int:
        return sum(t.created + t.updated for t in self.tallies.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            name: {"created": t.created, "updated": t.updated, "unchanged": t.unchanged}
            for name, t in self.tallies.items()
        }

    def render(self) -> str:
        lines = [f"{'':<20}{'created':>9}{'updated':>9}{'unchanged':>11}"]
        lines += [
            f"{name:<20}{t.created:>9}{t.updated:>9}{t.unchanged:>11}"
            for name, t in self.tallies.items()
        ]
        if self.written == 0:
            lines.append("nothing changed")
        return "\n".join(lines)


# -- 1. read ------------------------------------------------------------------------------------


class _UniqueKeyLoader(_SafeLoader):
    """PyYAML's SafeLoader, refusing duplicate keys: YAML silently keeps the last one, so a second
    `end:` pasted under a contract would otherwise win without a word. (`<<` merges may still
    override keys, as YAML intends.)"""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


# Dates stay strings for pydantic to parse: YAML's own timestamp resolver would turn `1961-02-30`
# into an exception without a position, and pydantic's error names the entry and field instead.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _DuplicateKeyError(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def read_document(path: Path) -> object:
    """The file's data. YAML unless the name ends in `.json` (YAML also reads JSON content).

    Parser messages are reduced to the problem and its position: PyYAML's full message quotes the
    offending line, which may hold a member's name or phone (hence `from None` below).
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ImportFileError(source, "", "the file is not UTF-8 text") from None
    except OSError as exc:
        raise ImportFileError(source, "", f"cannot read the file: {exc.strerror}") from exc
    if path.suffix.lower() == ".json":
        try:
            # parse_float=Decimal: money written as a JSON number stays exact.
            return json.loads(text, parse_float=Decimal, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError as exc:
            msg = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            raise ImportFileError(source, "", msg) from None
        except _DuplicateKeyError as exc:
            msg = f"not valid JSON: duplicate key {exc.args[0]!r}"
            raise ImportFileError(source, "", msg) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        where = (
            f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
            if exc.problem_mark is not None
            else ""
        )
        raise ImportFileError(source, "", f"not valid YAML: {exc.problem}{where}") from None
    except yaml.YAMLError:
        raise ImportFileError(source, "", "not valid YAML") from None


# -- 2. parse -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Located(Generic[M]):
    """A validated entry and its name in the file, e.g. "members[3] (id m-0004)"."""

    entry: str
    model: M


@dataclass(frozen=True, slots=True)
class DeviceAppearance:
    """One `devices[j]` entry under a member. A device may appear under several members."""

    member: Located[Member]
    index: int
    device: Device

    @property
    def field(self) -> str:
        return f"devices[{self.index}]"


@dataclass(frozen=True, slots=True)
class OnboardingFile:
    clients: tuple[Located[Client], ...]
    coaches: tuple[Located[Coach], ...]
    members: tuple[Located[Member], ...]
    #: Clients written with `contract:` (one term) rather than `contracts:`, for field names.
    single_contract: frozenset[str]

    def contract_field(self, client_id: str, index: int) -> str:
        return "contract" if client_id in self.single_contract else f"contracts[{index}]"

    def devices(self) -> dict[str, list[DeviceAppearance]]:
        """Device id -> its appearances, in file order."""
        result: dict[str, list[DeviceAppearance]] = {}
        for member in self.members:
            for j, device in enumerate(member.model.devices):
                result.setdefault(device.id, []).append(DeviceAppearance(member, j, device))
        return result


def _label(section: str, index: int, raw: object) -> str:
    ident = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(ident, str | int) and not isinstance(ident, bool):
        return f"{section}[{index}] (id {str(ident)[:64]})"
    return f"{section}[{index}]"


def _field_path(loc: tuple[int | str, ...], *, single_contract: bool = False) -> str:
    parts = list(loc)
    if single_contract and parts[:1] == ["contracts"]:
        parts = ["contract", *parts[2:]]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for "the dict key itself"
            out += f".{part}" if out else part
    return out


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (see docs/onboarding.md)"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if kind.startswith("decimal") and isinstance(error.get("input"), float):
        msg += '; write money as a quoted string, e.g. "68.00"'
    return msg


def _validate(model: type[M], raw: object, entry: str, *, single_contract: bool = False) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = _field_path(first["loc"], single_contract=single_contract)
        # `from None`: pydantic's own text echoes input values, which may be PHI.
        raise ImportFileError(entry, where, _message(first)) from None


def _client(index: int, raw: object) -> tuple[Located[Client], bool]:
    entry = _label("clients", index, raw)
    single = isinstance(raw, dict) and "contract" in raw
    if isinstance(raw, dict):
        if single and "contracts" in raw:
            raise ImportFileError(
                entry, "contract", "give either `contract` (one term) or `contracts`, not both"
            )
        if single:
            raw = {k: v for k, v in raw.items() if k != "contract"} | {
                "contracts": [raw["contract"]]
            }
        elif "contracts" not in raw:
            raise ImportFileError(
                entry, "contract", "required: `contract` (one term) or `contracts` (dated terms)"
            )
    return Located(entry, _validate(Client, raw, entry, single_contract=single)), single


def _no_duplicate_ids(section: str, entries: tuple[Located[Any], ...]) -> None:
    first: dict[str, str] = {}
    for located in entries:
        ident = located.model.id
        if ident in first:
            raise ImportFileError(located.entry, "id", f"duplicate id, also at {first[ident]}")
        first[ident] = located.entry


#: Device columns that appearances under several members must agree on when they state them.
_DEVICE_FIELDS: Final = ("kind", "status", "in_service_from", "shipped_on")


def _consistent_devices(document: OnboardingFile) -> None:
    for device_id, appearances in document.devices().items():
        stated: dict[str, tuple[Any, DeviceAppearance]] = {}
        for app in appearances:
            for name in _DEVICE_FIELDS:
                if name not in app.device.model_fields_set:
                    continue
                value = getattr(app.device, name)
                if name in stated and stated[name][0] != value:
                    other_value, other = stated[name]
                    raise ImportFileError(
                        app.member.entry,
                        f"{app.field}.{name}",
                        f"device {device_id} has {name} {_show(other_value)} under "
                        f"{other.member.entry} {other.field}",
                    )
                stated.setdefault(name, (value, app))


def parse_document(data: object, source: str) -> OnboardingFile:
    """Validate the whole file (no database needed). Raises ImportFileError on the first error."""
    if data is None:
        raise ImportFileError(source, "", "the file is empty")
    if not isinstance(data, dict):
        raise ImportFileError(source, "", "expected a mapping with clients, coaches and members")
    for key in data:
        if key not in SECTIONS:
            raise ImportFileError(source, str(key), "unknown section (clients, coaches, members)")
    lists: dict[str, list[object]] = {}
    for section in SECTIONS:
        items = data.get(section)
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ImportFileError(source, section, "must be a list of entries")
        lists[section] = items

    clients: list[Located[Client]] = []
    single: set[str] = set()
    for i, raw in enumerate(lists["clients"]):
        located, is_single = _client(i, raw)
        clients.append(located)
        if is_single:
            single.add(located.model.id)
    document = OnboardingFile(
        clients=tuple(clients),
        coaches=tuple(
            Located(_label("coaches", i, raw), _validate(Coach, raw, _label("coaches", i, raw)))
            for i, raw in enumerate(lists["coaches"])
        ),
        members=tuple(
            Located(_label("members", i, raw), _validate(Member, raw, _label("members", i, raw)))
            for i, raw in enumerate(lists["members"])
        ),
        single_contract=frozenset(single),
    )
    for section in SECTIONS:
        _no_duplicate_ids(section, getattr(document, section))
    _consistent_devices(document)
    return document


# -- 3. apply: what is stored -------------------------------------------------------------------


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`, in UTC.

    fold=0 (the default) is what makes this right on days whose midnight is skipped by a DST
    change (America/Santiago, America/Havana): the pre-transition offset maps 00:00 onto the
    transition itself, the first instant that day.
    """
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(slots=True)
class Stored:
    """What the database holds for the ids the file mentions (read inside the import's
    transaction, after the advisory lock)."""

    clients: dict[str, Row]
    contracts: dict[str, list[Row]]  # by client id
    prices: dict[int, dict[tuple[str, ...], Decimal]]  # by contract id
    device_prices: dict[int, dict[str, Decimal]]
    coaches: dict[str, Row]
    members: dict[str, Row]
    external_ids: list[Row]  # members elsewhere holding one of the file's external ids
    care_plans: dict[str, Row]
    enrollments: dict[str, list[Row]]  # by member id
    devices: dict[str, Row]
    assignments: dict[str, list[Row]]  # by device id

    @classmethod
    async def load(cls, conn: Conn, doc: OnboardingFile) -> Stored:
        client_ids = sorted(
            {c.model.id for c in doc.clients} | {m.model.client for m in doc.members}
        )
        coach_ids = sorted(
            {c.model.id for c in doc.coaches}
            | {m.model.coach for m in doc.members if m.model.coach is not None}
            | {o.set_by for m in doc.members for o in m.model.care_plan.overrides}
        )
        member_ids = [m.model.id for m in doc.members]
        device_ids = sorted(doc.devices())
        external = sorted({m.model.external_id for m in doc.members if m.model.external_id})

        contracts: dict[str, list[Row]] = {}
        for r in await conn.fetch(
            "SELECT id, client_id, start_date, end_date, min_readings, bundle_fallback "
            "FROM contracts WHERE client_id = ANY($1::text[]) ORDER BY start_date",
            [c.model.id for c in doc.clients],
        ):
            contracts.setdefault(r["client_id"], []).append(dict(r))
        contract_ids = [row["id"] for rows in contracts.values() for row in rows]
        prices: dict[int, dict[tuple[str, ...], Decimal]] = {}
        for r in await conn.fetch(
            "SELECT contract_id, programs, unit_price FROM contract_prices "
            "WHERE contract_id = ANY($1::bigint[])",
            contract_ids,
        ):
            prices.setdefault(r["contract_id"], {})[tuple(r["programs"])] = r["unit_price"]
        device_prices: dict[int, dict[str, Decimal]] = {}
        for r in await conn.fetch(
            "SELECT contract_id, device_kind, unit_price FROM contract_device_prices "
            "WHERE contract_id = ANY($1::bigint[])",
            contract_ids,
        ):
            device_prices.setdefault(r["contract_id"], {})[r["device_kind"]] = r["unit_price"]

        members: dict[str, Row] = {}
        for r in await conn.fetch(
            "SELECT id, client_id, name, birth_date, phone, emergency_contact::text, language, "
            "timezone, consent_to_monitoring, external_id, coach_id "
            "FROM members WHERE id = ANY($1::text[])",
            member_ids,
        ):
            members[r["id"]] = dict(r) | {
                "emergency_contact": _json_or_none(r["emergency_contact"])
            }
        enrollments: dict[str, list[Row]] = {}
        for r in await conn.fetch(
            "SELECT id, member_id, program, start_date, end_date FROM enrollments "
            "WHERE member_id = ANY($1::text[]) ORDER BY start_date, id",
            member_ids,
        ):
            enrollments.setdefault(r["member_id"], []).append(dict(r))
        assignments: dict[str, list[Row]] = {}
        for r in await conn.fetch(
            "SELECT id, device_id, member_id, assigned_from, assigned_to FROM device_assignments "
            "WHERE device_id = ANY($1::text[]) ORDER BY assigned_from NULLS FIRST, id",
            device_ids,
        ):
            assignments.setdefault(r["device_id"], []).append(dict(r))

        return cls(
            clients=await _by_id(
                conn,
                "SELECT id, name, timezone, currency, has_eligibility_file FROM clients "
                "WHERE id = ANY($1::text[])",
                client_ids,
            ),
            contracts=contracts,
            prices=prices,
            device_prices=device_prices,
            coaches=await _by_id(
                conn,
                "SELECT id, name, role, credential, team, email FROM coaches "
                "WHERE id = ANY($1::text[])",
                coach_ids,
            ),
            members=members,
            external_ids=[
                dict(r)
                for r in await conn.fetch(
                    "SELECT id, client_id, external_id FROM members "
                    "WHERE external_id = ANY($1::text[]) AND NOT id = ANY($2::text[])",
                    external,
                    member_ids,
                )
            ],
            care_plans={
                r["member_id"]: dict(r) | {"overrides": json.loads(r["overrides"])}
                for r in await conn.fetch(
                    "SELECT member_id, conditions, overrides::text FROM care_plans "
                    "WHERE member_id = ANY($1::text[])",
                    member_ids,
                )
            },
            enrollments=enrollments,
            devices=await _by_id(
                conn,
                "SELECT id, kind, status, in_service_from, shipped_on FROM devices "
                "WHERE id = ANY($1::text[])",
                device_ids,
            ),
            assignments=assignments,
        )


async def _by_id(conn: Conn, query: str, ids: list[str]) -> dict[str, Row]:
    return {r["id"]: dict(r) for r in await conn.fetch(query, ids)}


# -- 3. apply: the plan -------------------------------------------------------------------------


@dataclass(slots=True)
class Write:
    """One row to insert (`where` is None) or update, and where in the file it came from."""

    entity: str
    entry: str
    field: str
    table: str
    values: Row
    where: Row | None = None


@dataclass(slots=True)
class ContractWrite:
    entry: str
    field: str
    values: Row
    contract_id: int | None  # None: a new term
    columns_changed: bool
    prices: list[tuple[list[str], Decimal]] | None  # None: the stored table is kept
    device_prices: list[tuple[str, Decimal]] | None


@dataclass(slots=True)
class Plan:
    summary: ImportSummary = field(default_factory=ImportSummary)
    contracts: list[ContractWrite] = field(default_factory=list)
    writes: dict[str, list[Write]] = field(default_factory=lambda: {e: [] for e in ENTITIES})
    #: Stored assignments whose bounds change: deleted before any insert (see `execute`).
    assignment_deletes: list[tuple[int, str, str]] = field(default_factory=list)

    def row(self, w: Write, stored: Row | None) -> None:
        outcome = _outcome(stored, w.values)
        self.summary.add(w.entity, outcome)
        if outcome != "unchanged":
            self.writes[w.entity].append(w)


def _outcome(stored: Row | None, desired: Row) -> Outcome:
    if stored is None:
        return "created"
    return "unchanged" if all(stored[k] == v for k, v in desired.items()) else "updated"


def _column(value: Any) -> Any:
    """A model value in the form stored (and read back) by asyncpg."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, frozenset | set):
        return sorted(_column(v) for v in value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, tuple):
        return [_column(v) for v in value]
    return value


def _merge(model: BaseModel, path: str, stored: Row | None, column: str, default: Any) -> Any:
    """The merge rule: the value the file states at `path` (dotted), else the stored column, else
    the default of a new record."""
    obj: Any = model
    for name in path.split("."):
        if obj is None or name not in obj.model_fields_set:
            return stored[column] if stored is not None else default
        obj = getattr(obj, name)
    return _column(obj)


def _show(value: Any) -> str:
    if value is None:
        return "open"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(_column(value))


def _dates_overlap(a: tuple[date, date | None], b: tuple[date, date | None]) -> bool:
    """Inclusive date intervals, None = open end (daterange(start, end, '[]'))."""
    return (a[1] is None or b[0] <= a[1]) and (b[1] is None or a[0] <= b[1])


def _instants_overlap(
    a: tuple[datetime | None, datetime | None], b: tuple[datetime | None, datetime | None]
) -> bool:
    """Half-open instants [from, to), None = open (tstzrange(from, to))."""
    return (a[1] is None or b[0] is None or b[0] < a[1]) and (
        b[1] is None or a[0] is None or a[0] < b[1]
    )


class Planner:
    """Compares the file with what is stored; raises ImportFileError before anything is written."""

    def __init__(self, doc: OnboardingFile, stored: Stored) -> None:
        self.doc = doc
        self.stored = stored
        self.plan = Plan()
        self.client_zone: dict[str, str] = {
            cid: row["timezone"] for cid, row in stored.clients.items()
        } | {c.model.id: c.model.timezone for c in doc.clients}
        self.coach_ids = set(stored.coaches) | {c.model.id for c in doc.coaches}
        self.member_zone: dict[str, str] = {}

    def build(self) -> Plan:
        self._clients()
        self._coaches()
        self._members()
        self._devices()
        return self.plan

    def _clients(self) -> None:
        for located in self.doc.clients:
            c = located.model
            st = self.stored.clients.get(c.id)
            values = {
                "id": c.id,
                "name": c.name,
                "timezone": c.timezone,
                "currency": c.currency,
                "has_eligibility_file": _merge(
                    c, "has_eligibility_file", st, "has_eligibility_file", False
                ),
            }
            self.plan.row(Write("clients", located.entry, "", "clients", values, _key(st)), st)
            self._contracts(located)

    def _contracts(self, located: Located[Client]) -> None:
        c = located.model
        stored_terms = self.stored.contracts.get(c.id, [])
        by_start = {row["start_date"]: row for row in stored_terms}
        in_file = {term.start for term in c.contracts}
        for k, term in enumerate(c.contracts):
            where = self.doc.contract_field(c.id, k)
            for other in stored_terms:
                if other["start_date"] not in in_file and _dates_overlap(
                    (term.start, term.end), (other["start_date"], other["end_date"])
                ):
                    raise ImportFileError(
                        located.entry,
                        where,
                        f"term {term.start}..{term.end} overlaps the stored term "
                        f"{other['start_date']}..{other['end_date']}, which this file does not "
                        "list (terms are identified by their start date)",
                    )
            st = by_start.get(term.start)
            values = {
                "client_id": c.id,
                "start_date": term.start,
                "end_date": term.end,
                "min_readings": _merge(term, "active_rule.min_readings", st, "min_readings", 1),
                "bundle_fallback": _merge(term, "bundle_fallback", st, "bundle_fallback", "error"),
            }
            prices = {tuple(_column(p.programs)): p.unit_price for p in term.prices}
            stored_prices = self.stored.prices.get(st["id"], {}) if st else None
            device_prices: dict[str, Decimal] = (
                {kind.value: price for kind, price in term.device_prices.items()}
                if "device_prices" in term.model_fields_set or st is None
                else self.stored.device_prices.get(st["id"], {})
            )
            stored_device_prices = self.stored.device_prices.get(st["id"], {}) if st else None
            columns_changed = _outcome(st, values) != "unchanged"
            prices_changed = prices != stored_prices
            device_prices_changed = (
                bool(device_prices) if st is None else device_prices != stored_device_prices
            )
            if st is None:
                self.plan.summary.add("contracts", "created")
            elif columns_changed or prices_changed or device_prices_changed:
                self.plan.summary.add("contracts", "updated")
            else:
                self.plan.summary.add("contracts", "unchanged")
                continue
            self.plan.contracts.append(
                ContractWrite(
                    entry=located.entry,
                    field=where,
                    values=values,
                    contract_id=st["id"] if st else None,
                    columns_changed=columns_changed,
                    prices=sorted((list(p), v) for p, v in prices.items())
                    if prices_changed
                    else None,
                    device_prices=sorted(device_prices.items()) if device_prices_changed else None,
                )
            )

    def _coaches(self) -> None:
        for located in self.doc.coaches:
            c = located.model
            st = self.stored.coaches.get(c.id)
            values = {
                "id": c.id,
                "name": c.name,
                "role": _merge(c, "role", st, "role", "coach"),
                "credential": _merge(c, "credential", st, "credential", "none"),
                "team": _merge(c, "team", st, "team", None),
                "email": _merge(c, "email", st, "email", None),
            }
            self.plan.row(Write("coaches", located.entry, "", "coaches", values, _key(st)), st)

    def _members(self) -> None:
        external: dict[tuple[str, str], str] = {
            (r["client_id"], r["external_id"]): f"member {r['id']}"
            for r in self.stored.external_ids
        }
        for located in self.doc.members:
            m = located.model
            entry = located.entry
            if m.client not in self.client_zone:
                raise ImportFileError(
                    entry, "client", f"unknown client {m.client!r} (not in this file nor stored)"
                )
            if m.coach is not None and m.coach not in self.coach_ids:
                raise ImportFileError(
                    entry, "coach", f"unknown coach {m.coach!r} (not in this file nor stored)"
                )
            st = self.stored.members.get(m.id)
            zone = self.client_zone[m.client]
            if "timezone" in m.model_fields_set:
                zone = m.timezone or zone
            elif st is not None:
                zone = st["timezone"]
            self.member_zone[m.id] = zone
            values = {
                "id": m.id,
                "client_id": m.client,
                "name": m.name,
                "birth_date": m.birth_date,
                "phone": _merge(m, "phone", st, "phone", None),
                "emergency_contact": _merge(m, "emergency_contact", st, "emergency_contact", None),
                "language": _merge(m, "language", st, "language", "en"),
                "timezone": zone,
                "consent_to_monitoring": _merge(
                    m, "consent_to_monitoring", st, "consent_to_monitoring", True
                ),
                "external_id": _merge(m, "external_id", st, "external_id", None),
                "coach_id": _merge(m, "coach", st, "coach_id", None),
            }
            if values["external_id"] is not None:
                pair = (m.client, values["external_id"])
                if pair in external:
                    # The value itself is not shown: external ids are often record numbers.
                    raise ImportFileError(
                        entry, "external_id", f"already used by {external[pair]} of {m.client}"
                    )
                external[pair] = entry
            self.plan.row(Write("members", entry, "", "members", values, _key(st)), st)
            self._care_plan(located)
            self._enrollments(located)

    def _care_plan(self, located: Located[Member]) -> None:
        m = located.model
        for k, override in enumerate(m.care_plan.overrides):
            if override.set_by not in self.coach_ids:
                raise ImportFileError(
                    located.entry,
                    f"care_plan.overrides[{k}].set_by",
                    f"unknown coach {override.set_by!r} (not in this file nor stored)",
                )
        st = self.stored.care_plans.get(m.id)
        values = {
            "member_id": m.id,
            "conditions": _merge(m, "care_plan.conditions", st, "conditions", []),
            "overrides": _merge(m, "care_plan.overrides", st, "overrides", []),
        }
        where = None if st is None else {"member_id": m.id}
        self.plan.row(
            Write("care_plans", located.entry, "care_plan", "care_plans", values, where), st
        )

    def _enrollments(self, located: Located[Member]) -> None:
        m = located.model
        stored_rows = self.stored.enrollments.get(m.id, [])
        by_key = {(r["program"], r["start_date"]): r for r in stored_rows}
        final: list[tuple[str, date, date | None, int]] = []  # program, start, end, index
        for k, e in enumerate(m.enrollments):
            where = f"enrollments[{k}]"
            key = (e.program.value, e.start)
            st = by_key.pop(key, None)
            if any((p, s) == key for p, s, _, _ in final):
                raise ImportFileError(
                    located.entry, where, f"{e.program.value} from {e.start} is listed twice"
                )
            end = _merge(e, "end", st, "end_date", None)
            values = {"member_id": m.id, "program": key[0], "start_date": e.start, "end_date": end}
            for program, start, other_end, other in final:
                if program == key[0] and _dates_overlap((e.start, end), (start, other_end)):
                    raise ImportFileError(
                        located.entry,
                        where,
                        f"overlaps enrollments[{other}] ({start}..{_show(other_end)}) "
                        "in the same program",
                    )
            final.append((key[0], e.start, end, k))
            self.plan.row(
                Write(
                    "enrollments",
                    located.entry,
                    where,
                    "enrollments",
                    values,
                    None if st is None else {"id": st["id"]},
                ),
                st,
            )
        for r in by_key.values():  # stored, not in the file: kept, so they must not overlap
            for program, start, end, k in final:
                if program == r["program"] and _dates_overlap(
                    (r["start_date"], r["end_date"]), (start, end)
                ):
                    raise ImportFileError(
                        located.entry,
                        f"enrollments[{k}]",
                        f"overlaps the stored {program} enrollment from {r['start_date']} to "
                        f"{_show(r['end_date'])}, which this file does not list (enrollments are "
                        "identified by program and start date)",
                    )

    def _devices(self) -> None:
        for device_id, appearances in self.doc.devices().items():
            first = appearances[0]
            st = self.stored.devices.get(device_id)
            kind = first.device.kind.value
            if st is not None and st["kind"] != kind:
                raise ImportFileError(
                    first.member.entry,
                    f"{first.field}.kind",
                    f"device {device_id} is stored as a {st['kind']}; a device's kind never "
                    "changes (a different device needs a different id)",
                )
            values: Row = {"id": device_id, "kind": kind}
            for name, default in (
                ("status", "active"),
                ("in_service_from", None),
                ("shipped_on", None),
            ):
                stating = [a for a in appearances if name in a.device.model_fields_set]
                values[name] = (
                    _column(getattr(stating[0].device, name))
                    if stating
                    else (st[name] if st is not None else default)
                )
            self.plan.row(
                Write("devices", first.member.entry, first.field, "devices", values, _key(st)), st
            )
            self._assignments(device_id, appearances)

    def _assignments(self, device_id: str, appearances: list[DeviceAppearance]) -> None:
        stored_rows = self.stored.assignments.get(device_id, [])
        matched: dict[int, DeviceAppearance] = {}
        final: list[tuple[datetime | None, datetime | None, DeviceAppearance]] = []
        for app in appearances:
            d = app.device
            member_id = app.member.model.id
            zone = ZoneInfo(self.member_zone[member_id])
            stated = d.model_fields_set
            start = local_midnight(d.assigned_from, zone) if d.assigned_from else None
            # assigned_to is inclusive: the assignment ends where the next local day begins.
            end = local_midnight(d.assigned_to + timedelta(days=1), zone) if d.assigned_to else None
            probe = (
                start if "assigned_from" in stated else None,
                end if "assigned_to" in stated else None,
            )
            candidates = [
                r
                for r in stored_rows
                if r["member_id"] == member_id
                and _instants_overlap(probe, (r["assigned_from"], r["assigned_to"]))
            ]
            if len(candidates) > 1:
                raise ImportFileError(
                    app.member.entry,
                    app.field,
                    f"matches {len(candidates)} stored assignments of device {device_id} to "
                    f"{member_id}; state assigned_from and assigned_to to pick one",
                )
            st = candidates[0] if candidates else None
            if st is not None:
                if st["id"] in matched:
                    other = matched[st["id"]]
                    raise ImportFileError(
                        app.member.entry,
                        app.field,
                        f"matches the same stored assignment as {other.member.entry} {other.field}",
                    )
                matched[st["id"]] = app
                if "assigned_from" not in stated:
                    start = st["assigned_from"]
                if "assigned_to" not in stated:
                    end = st["assigned_to"]
            if start is not None and end is not None and end <= start:
                raise ImportFileError(
                    app.member.entry,
                    f"{app.field}.assigned_to",
                    f"the assignment would end ({_show(end)}) before it starts ({_show(start)})",
                )
            for other_start, other_end, other in final:
                if _instants_overlap((start, end), (other_start, other_end)):
                    raise ImportFileError(
                        app.member.entry,
                        f"{app.field}.assigned_from",
                        f"device {device_id} would be held twice at once: "
                        f"{_show(start)}..{_show(end)} (member {member_id}) overlaps "
                        f"{_show(other_start)}..{_show(other_end)} (member "
                        f"{other.member.model.id}, {other.member.entry} {other.field})",
                    )
            final.append((start, end, app))
            values = {
                "device_id": device_id,
                "member_id": member_id,
                "assigned_from": start,
                "assigned_to": end,
            }
            outcome = _outcome(st, values)
            self.plan.summary.add("device_assignments", outcome)
            if outcome == "updated" and st is not None:
                self.plan.assignment_deletes.append((st["id"], app.member.entry, app.field))
            if outcome != "unchanged":
                self.plan.writes["device_assignments"].append(
                    Write(
                        "device_assignments",
                        app.member.entry,
                        app.field,
                        "device_assignments",
                        values,
                    )
                )
        for r in stored_rows:  # stored, not in the file: kept, so they must not overlap
            if r["id"] in matched:
                continue
            for start, end, app in final:
                if _instants_overlap((r["assigned_from"], r["assigned_to"]), (start, end)):
                    raise ImportFileError(
                        app.member.entry,
                        f"{app.field}.assigned_from",
                        f"device {device_id} would be held twice at once: "
                        f"{_show(start)}..{_show(end)} (member {app.member.model.id}) overlaps "
                        "the stored "
                        f"assignment {_show(r['assigned_from'])}..{_show(r['assigned_to'])} "
                        f"(member {r['member_id']}), which this file does not list",
                    )


def _key(stored: Row | None) -> Row | None:
    return None if stored is None else {"id": stored["id"]}


# -- 3. apply: writing --------------------------------------------------------------------------

_JSONB: Final = frozenset({"emergency_contact", "overrides"})
#: Columns set on every update of a table, beside the changed values.
_ON_UPDATE: Final = {"care_plans": ", updated_at = now()"}


def _param(column: str, n: int) -> str:
    return f"${n}::jsonb" if column in _JSONB else f"${n}"


def _arg(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSONB and value is not None else value


async def _insert(conn: Conn, table: str, values: Row, returning: str | None = None) -> Any:
    columns = list(values)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(_param(c, i) for i, c in enumerate(columns, 1))})"
    )
    args = [_arg(c, values[c]) for c in columns]
    if returning is None:
        await conn.execute(sql, *args)
        return None
    return await conn.fetchval(f"{sql} RETURNING {returning}", *args)


async def _update(conn: Conn, table: str, values: Row, where: Row) -> None:
    columns = [c for c in values if c not in where]
    keys = list(where)
    sets = ", ".join(f"{c} = {_param(c, i)}" for i, c in enumerate(columns, 1))
    conditions = " AND ".join(f"{k} = ${i}" for i, k in enumerate(keys, len(columns) + 1))
    await conn.execute(
        f"UPDATE {table} SET {sets}{_ON_UPDATE.get(table, '')} WHERE {conditions}",
        *[_arg(c, values[c]) for c in columns],
        *[where[k] for k in keys],
    )


@contextmanager
def _refused_by_database(entry: str, where: str) -> Iterator[None]:
    """The schema's constraints back the planner's checks up (a concurrent writer outside the
    importer's lock); their errors are translated by type, never by message text."""
    try:
        yield
    except asyncpg.ExclusionViolationError as exc:
        raise ImportFileError(
            entry, where, f"overlaps an interval stored in the database ({exc.constraint_name})"
        ) from exc
    except asyncpg.UniqueViolationError as exc:
        raise ImportFileError(
            entry, where, f"duplicates a row stored in the database ({exc.constraint_name})"
        ) from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise ImportFileError(
            entry, where, f"refused by the database ({exc.constraint_name})"
        ) from exc


async def _write(conn: Conn, w: Write) -> None:
    with _refused_by_database(w.entry, w.field):
        if w.where is None:
            await _insert(conn, w.table, w.values)
        else:
            await _update(conn, w.table, w.values, w.where)


async def execute(conn: Conn, plan: Plan) -> None:
    """Write the plan in foreign-key order. Within a table, updates go before inserts: an update
    may shrink an interval that a new row then uses, never the reverse."""
    for w in plan.writes["clients"]:
        await _write(conn, w)
    for c in sorted(plan.contracts, key=lambda c: c.contract_id is None):
        with _refused_by_database(c.entry, c.field):
            contract_id = c.contract_id
            if contract_id is None:
                contract_id = await _insert(conn, "contracts", c.values, returning="id")
            elif c.columns_changed:
                await _update(conn, "contracts", c.values, {"id": contract_id})
            if c.prices is not None:
                await conn.execute(
                    "DELETE FROM contract_prices WHERE contract_id = $1", contract_id
                )
                await conn.executemany(
                    "INSERT INTO contract_prices (contract_id, programs, unit_price) "
                    "VALUES ($1, $2, $3)",
                    [(contract_id, programs, price) for programs, price in c.prices],
                )
            if c.device_prices is not None:
                await conn.execute(
                    "DELETE FROM contract_device_prices WHERE contract_id = $1", contract_id
                )
                await conn.executemany(
                    "INSERT INTO contract_device_prices (contract_id, device_kind, unit_price) "
                    "VALUES ($1, $2, $3)",
                    [(contract_id, kind, price) for kind, price in c.device_prices],
                )
    for entity in ("coaches", "members", "care_plans", "enrollments", "devices"):
        for w in sorted(plan.writes[entity], key=lambda w: w.where is None):
            await _write(conn, w)
    # A changed assignment is deleted and inserted again rather than updated in place: the
    # planner checked that the final set does not overlap, but the order of in-place updates
    # could still collide on the exclusion constraint (two members swapping a device).
    for assignment_id, entry, where in plan.assignment_deletes:
        with _refused_by_database(entry, where):
            await conn.execute("DELETE FROM device_assignments WHERE id = $1", assignment_id)
    for w in plan.writes["device_assignments"]:
        await _write(conn, w)


async def import_onboarding_file(pool: asyncpg.Pool, path: Path) -> ImportSummary:
    """Import an onboarding file (docs/onboarding.md) in one transaction.

    Raises ImportFileError naming the entry and field of the first problem; then nothing is
    written. Importing the same file again writes nothing and reports everything unchanged.
    """
    document = parse_document(read_document(path), str(path))
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            stored = await Stored.load(conn, document)
            plan = Planner(document, stored).build()
            await execute(conn, plan)
    except asyncpg.UndefinedTableError as exc:
        raise ConfigurationError(
            "the database has no Vigil schema: run `vigil db migrate` first"
        ) from exc
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.ConnectionDoesNotExistError) as exc:
        raise StorageUnavailable(f"lost the database during the import: {exc}") from exc
    log.info("onboarding import committed: %s", json.dumps(plan.summary.as_dict()))
    return plan.summary
