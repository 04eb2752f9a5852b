"""The simulated population and its readings: deterministic, consistent, and valid for Vigil."""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from services.domain.organisation import Client, Coach, Member
from services.domain.readings import (
    BloodPressureReading,
    GlucoseReading,
    WeightReading,
    parse_reading,
)
from services.pipeline.payload import reading_from_bytes
from simulators.population import PROGRAM_DEVICE, PopulationError, generate_population
from simulators.readings import ReadingSimulator

SIMULATORS = Path(__file__).resolve().parent.parent / "simulators"
NOW = datetime(2026, 3, 8, 8, 30, tzinfo=UTC)  # the morning US daylight saving time starts


def test_same_seed_gives_the_same_file_and_another_seed_does_not() -> None:
    first = yaml.safe_dump(generate_population(40, seed=7), sort_keys=False)
    again = yaml.safe_dump(generate_population(40, seed=7), sort_keys=False)
    other = yaml.safe_dump(generate_population(40, seed=8), sort_keys=False)
    assert first == again
    assert first != other
    assert "&id" not in first  # no YAML aliases: readable by a person


def test_member_i_does_not_depend_on_the_population_size() -> None:
    small = generate_population(10, seed=3)
    large = generate_population(60, seed=3)
    assert large["members"][:10] == small["members"]
    assert large["clients"] == small["clients"]


def test_at_least_one_member_is_required() -> None:
    with pytest.raises(PopulationError):
        generate_population(0)


def test_entries_are_valid_onboarding_entries() -> None:
    population = generate_population(80)
    clients = {c["id"]: c for c in population["clients"]}
    coaches = {Coach.model_validate(c).id for c in population["coaches"]}
    assert len(clients) == 2
    for entry in clients.values():
        # One term under `contract:` is the onboarding file's shorthand for `contracts: [term]`.
        fields = {k: v for k, v in entry.items() if k != "contract"}
        client = Client.model_validate({**fields, "contracts": [entry["contract"]]})
        (contract,) = client.contracts
        assert contract.start <= NOW.date() <= contract.end
    ids: set[str] = set()
    for entry in population["members"]:
        member = Member.model_validate(entry)
        assert member.id not in ids
        ids.add(member.id)
        assert member.client in clients
        assert member.coach in coaches
        assert re.fullmatch(r"\+1-\d{3}-555-01\d\d", member.phone or ""), member.phone
    device_ids = [d["id"] for m in population["members"] for d in m["devices"]]
    assert len(device_ids) == len(set(device_ids))


def test_devices_match_programs_and_conditions() -> None:
    population = generate_population(120)
    programs_seen: set[str] = set()
    heart_failure = 0
    for member in population["members"]:
        programs = {e["program"] for e in member["enrollments"]}
        conditions = set(member["care_plan"]["conditions"])
        kinds = [d["kind"] for d in member["devices"]]
        expected = {PROGRAM_DEVICE[p] for p in programs}
        if "heart_failure" in conditions:
            heart_failure += 1
            expected.add("scale")
        assert sorted(kinds) == sorted(expected), member["id"]
        if "diabetes" in programs:
            assert conditions & {"type_1_diabetes", "type_2_diabetes"}, member["id"]
        starts = {e["start"] for e in member["enrollments"]}
        assert {d["assigned_from"] for d in member["devices"]} <= starts
        programs_seen |= programs
    assert programs_seen == set(PROGRAM_DEVICE)
    assert heart_failure > 0


def test_bundles_are_priced_where_the_contract_refuses_to_sum() -> None:
    population = generate_population(200)
    priced = {
        c["id"]: {frozenset(p["programs"]) for p in c["contract"]["prices"]}
        for c in population["clients"]
        if c["contract"]["bundle_fallback"] == "error"
    }
    assert priced
    for member in population["members"]:
        if member["client"] in priced:
            programs = frozenset(e["program"] for e in member["enrollments"])
            assert programs in priced[member["client"]], member["id"]


def test_readings_validate_and_carry_the_members_local_offset() -> None:
    population = generate_population(30)
    zones = {
        d["id"]: (ZoneInfo(m["timezone"]), d["kind"])
        for m in population["members"]
        for d in m["devices"]
    }
    simulator = ReadingSimulator(population)
    kind_of_device = {"glucose_meter": GlucoseReading, "bp_monitor": BloodPressureReading,
                      "scale": WeightReading}  # fmt: skip
    last_seq: dict[str, int] = defaultdict(int)
    readings = simulator.take(NOW, 400) + simulator.take(NOW + timedelta(minutes=1), 400)
    for r in readings:
        parsed = parse_reading(json.loads(r.payload))
        assert reading_from_bytes(r.payload, 256 * 1024) == parsed  # the pipeline's decoder
        zone, device_kind = zones[parsed.device_id]
        assert isinstance(parsed, kind_of_device[device_kind])
        assert parsed.kind == r.kind
        assert parsed.measured_at.utcoffset() == parsed.measured_at.astimezone(zone).utcoffset()
        assert parsed.measured_at in (NOW, NOW + timedelta(minutes=1))
        assert parsed.seq == last_seq[parsed.device_id] + 1  # per device, one by one
        last_seq[parsed.device_id] = parsed.seq
        if isinstance(parsed, GlucoseReading):
            assert parsed.unit == "mg/dL"
            assert parsed.meal is not None
        elif isinstance(parsed, BloodPressureReading):
            assert parsed.unit == "mmHg"
            assert parsed.pulse is not None
        else:
            assert parsed.unit == "lb"
    assert {r.kind for r in readings} == {"glucose", "blood_pressure", "weight"}


def test_some_readings_are_dangerous_and_labelled_so() -> None:
    simulator = ReadingSimulator(generate_population(40))
    readings = simulator.take(NOW, 3000)
    low = severe = 0
    for r in readings:
        parsed = parse_reading(json.loads(r.payload))
        if isinstance(parsed, GlucoseReading):
            assert parsed.value is not None
            is_low = parsed.value < Decimal(54)
            assert is_low == (r.hazard == "glucose_below_54")
            low += is_low
        elif isinstance(parsed, BloodPressureReading):
            is_severe = parsed.systolic > 180 or parsed.diastolic > 120
            assert is_severe == (r.hazard == "bp_above_180_120")
            severe += is_severe
        else:
            assert r.hazard is None
    # About 4 % of each kind; far from zero, far from most.
    assert 10 < low < 300
    assert 10 < severe < 300


def test_reading_bytes_are_deterministic_and_sequences_continue() -> None:
    population = generate_population(20)
    first = [r.payload for r in ReadingSimulator(population, seed=5).take(NOW, 200)]
    again = [r.payload for r in ReadingSimulator(population, seed=5).take(NOW, 200)]
    assert first == again
    resumed = ReadingSimulator(population, seed=5, start_seq={"demo-gm-0001": 41})
    seqs = [r.seq for r in resumed.take(NOW, 300) if r.device_id == "demo-gm-0001"]
    assert seqs
    assert seqs == list(range(42, 42 + len(seqs)))


def test_naive_now_is_refused() -> None:
    simulator = ReadingSimulator(generate_population(3))
    with pytest.raises(PopulationError):
        simulator.take(datetime(2026, 1, 1), 1)  # naive: the point of the test


def test_simulators_do_not_import_vigil_internals() -> None:
    """Simulators are devices: they reach Vigil over the wire, never through its code."""
    forbidden = ("services", "alerting", "device_gateway", "coach_console")
    for path in sorted(SIMULATORS.glob("**/*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
