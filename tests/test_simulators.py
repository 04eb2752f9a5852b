"""The simulators: deterministic output, population statistics in the documented bands
(docs/simulators.md), scenario files, load profiles, and 500 devices through a real Mosquitto
into the gateway with every reading stored exactly once."""

from __future__ import annotations

import ast
import asyncio
import re
import statistics
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np
import orjson
import pytest
import typer
import yaml
from scipy.stats import theilslopes
from typer.testing import CliRunner

from services.cli_simulate import simulate
from services.domain.readings import parse_reading
from services.embedded import private_mosquitto
from services.onboarding import import_onboarding_file, parse_document
from simulators.devices import DeviceClock, FaultShares
from simulators.fleet import FleetConfig, FleetSimulation
from simulators.load import MAX_CHUNK, mass_reconnect, morning_peak, steady_state
from simulators.meter import VirtualMeter
from simulators.profiles import build_members
from tests.gateway_harness import GatewayProcess, gateway_env

SIMULATORS = Path(__file__).resolve().parent.parent / "simulators"
START = "2026-03-02T00:00:00-06:00"

# The command as the lead registers it in services/cli.py (`app.command("simulate")(simulate)`).
_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
_app.command("simulate")(simulate)


@_app.command("version")
def _version() -> None:  # a second command, so `simulate` stays a named subcommand
    """Unused."""


_SIMULATE = (
    "import typer\nfrom services.cli_simulate import simulate\n"
    "app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)\n"
    "app.command('simulate')(simulate)\napp.command('version')(lambda: None)\napp()\n"
)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(_app, ["simulate", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --- boundaries ----------------------------------------------------------------------------------


def test_simulators_import_nothing_of_vigil() -> None:
    """Simulators are devices: they reach Vigil over the wire, never through its code."""
    forbidden = {"services", "alerting", "device_gateway", "coach_console"}
    files = sorted(SIMULATORS.glob("**/*.py"))
    assert len(files) >= 12
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["<relative>"]
            else:
                continue
            for name in names:
                assert name != "<relative>", f"{path.name}: relative import"
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


# --- determinism ---------------------------------------------------------------------------------

_SCENARIO = """
events:
  - {{member: {gm}, day: 1, at: "07:10", glucose: 52, meal: fasting}}
  - {{member: {gm}, day: 1, at: "07:25", glucose: 88}}
  - {{member: {bp}, at: "2026-03-03T21:05:00-06:00", blood_pressure: "186/122", pulse: 91}}
  - {{device: {offline}, day: 2, at: "08:00", offline_hours: 30}}
  - {{device: {reset}, day: 3, at: "00:00", clock: reset}}
"""


def _with(kind: str, seeds: tuple[int, ...], skip: int = 0) -> str:
    """The id of a member (or its device) that has a device of `kind` under every seed."""
    populations = [build_members(40, seed=s) for s in seeds]
    found = [
        i for i in range(40)
        if all(any(d.kind == kind for d in p[i].devices) for p in populations)
    ]  # fmt: skip
    return populations[0][found[skip]].id


def _dry_run(tmp: Path, name: str, *args: str) -> tuple[bytes, bytes]:
    out, pop = tmp / f"{name}.jsonl", tmp / f"{name}.yaml"
    _cli("--dry-run", "--out", str(out), "--write-population", str(pop), *args)
    return out.read_bytes(), pop.read_bytes()


def test_same_seed_gives_byte_identical_reading_streams(tmp_path: Path) -> None:
    seeds = (11, 12)
    gm, bp = _with("glucose_meter", seeds), _with("bp_monitor", seeds)
    gm_device = gm.replace("m-", "gm-")
    offline = _with("glucose_meter", seeds, 1).replace("m-", "gm-")
    reset = _with("glucose_meter", seeds, 2).replace("m-", "gm-")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(_SCENARIO.format(gm=gm, bp=bp, offline=offline, reset=reset))
    args = ("--members", "60", "--days", "14", "--start", START, "--scenario", str(scenario),
            "--clock-drift-share", "0.2", "--clock-reset-share", "0.05")  # fmt: skip
    first, first_pop = _dry_run(tmp_path, "a", "--seed", "11", *args)
    again, again_pop = _dry_run(tmp_path, "b", "--seed", "11", *args)
    other, _ = _dry_run(tmp_path, "c", "--seed", "12", *args)
    assert first == again and first_pop == again_pop
    assert first != other
    lines = first.splitlines()
    assert len(lines) > 60 * 14
    seqs: dict[str, int] = defaultdict(int)
    for line in lines:
        reading = parse_reading(orjson.loads(line))  # each line is a valid Vigil reading
        assert reading.seq == seqs[reading.device_id] + 1  # per device, one by one
        seqs[reading.device_id] = reading.seq
    # The scripted readings are there, exactly, at the member's local time.
    objs = [orjson.loads(x) for x in lines]
    scripted = [
        (o["value"], o["measured_at"][:19])
        for o in objs
        if o["device_id"] == gm_device
        and o["measured_at"][:19] in ("2026-03-02T07:10:00", "2026-03-02T07:25:00")
    ]
    assert scripted == [(52, "2026-03-02T07:10:00"), (88, "2026-03-02T07:25:00")]
    crisis = [
        o for o in objs if o["device_id"] == bp.replace("m-", "bp-") and o.get("systolic") == 186
    ]
    assert crisis and crisis[0]["measured_at"] == "2026-03-03T21:05:00-06:00"
    # The reset clock reports 2000-01-01 from day 3 on; the other clocks do not.
    stamps = [o["measured_at"][:4] for o in objs if o["device_id"] == reset]
    assert "2000" in stamps and stamps[0] == "2026"
    # The population file holds every device that sent readings, and validates as onboarding.
    population = yaml.safe_load(first_pop)
    assert set(seqs) <= {d["id"] for m in population["members"] for d in m["devices"]}
    parse_document(population, "population")


def test_scenario_errors_name_the_event(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"member": "m-0001", "day": 1, "at": "08:00", "glucose": 90}\n'
                   '{"member": "m-9999", "day": 1, "at": "08:00", "glucose": 90}\n')  # fmt: skip
    result = CliRunner().invoke(
        _app, ["simulate", "--members", "5", "--days", "2", "--start", START, "--scenario",
               str(bad), "--dry-run", "--out", str(tmp_path / "x.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "line 2" in result.output and "m-9999" in result.output
    # `background: false`: only the scripted readings, exactly, on the members' own devices.
    only = tmp_path / "only.jsonl"
    only.write_text('{"background": false}\n'
                    '{"member": "m-0002", "day": 2, "at": "06:30", "blood_pressure": "141/93"}\n'
                    '{"member": "m-0001", "day": 1, "at": "07:00:30", "glucose": "LO"}\n'
                    '{"member": "m-0001", "at": "2026-03-02T23:59:59", "glucose": 5.1, '
                    '"unit": "mmol/L"}\n')  # fmt: skip
    out, pop = tmp_path / "only-out.jsonl", tmp_path / "only-pop.yaml"
    _cli("--members", "5", "--days", "2", "--start", START, "--scenario", str(only),
         "--mix", "t2_htn=1", "--clock-drift-share", "0", "--clock-reset-share", "0",
         "--dry-run", "--out", str(out), "--write-population", str(pop))  # fmt: skip
    zones = {m["id"]: ZoneInfo(m["timezone"]) for m in yaml.safe_load(pop.read_text())["members"]}

    def local(member: str, text: str) -> str:
        return datetime.fromisoformat(text).replace(tzinfo=zones[member]).isoformat()

    expected: list[dict[str, Any]] = [
        {"device_id": "gm-0001", "seq": 1, "kind": "glucose",
         "measured_at": local("m-0001", "2026-03-02T07:00:30"), "unit": "mg/dL", "flags": ["LO"]},
        {"device_id": "gm-0001", "seq": 2, "kind": "glucose",
         "measured_at": local("m-0001", "2026-03-02T23:59:59"), "value": 5.1, "unit": "mmol/L"},
        {"device_id": "bp-0002", "seq": 1, "kind": "blood_pressure",
         "measured_at": local("m-0002", "2026-03-03T06:30:00"), "systolic": 141,
         "diastolic": 93, "unit": "mmHg"},
    ]  # fmt: skip
    got = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert sorted(got, key=lambda o: datetime.fromisoformat(o["measured_at"])) == sorted(
        expected, key=lambda o: datetime.fromisoformat(o["measured_at"])
    )


# --- population statistics -----------------------------------------------------------------------


@dataclass
class _Run:
    days: int
    readings: list[dict[str, Any]]
    members: dict[str, dict[str, Any]]  # member id -> onboarding entry
    device_member: dict[str, str]

    def of(self, kind: str, members: set[str]) -> list[dict[str, Any]]:
        return [r for r in self.readings
                if r["kind"] == kind and self.device_member[r["device_id"]] in members]  # fmt: skip

    def cohort(self, *, condition: str | None = None, program: str | None = None) -> set[str]:
        return {
            m["id"] for m in self.members.values()
            if (condition is None or condition in m["care_plan"]["conditions"])
            and (program is None or program in {e["program"] for e in m["enrollments"]})
        }  # fmt: skip


@pytest.fixture(scope="module")
def population_run(tmp_path_factory: pytest.TempPathFactory) -> _Run:
    """400 members over 75 days, default mix and device faults: what the bands are about."""
    tmp = tmp_path_factory.mktemp("stats")
    days = 75
    lines, pop = _dry_run(tmp, "run", "--members", "400", "--days", str(days), "--start", START)
    population = yaml.safe_load(pop)
    members = {m["id"]: m for m in population["members"]}
    device_member = {d["id"]: m["id"] for m in members.values() for d in m["devices"]}
    return _Run(days, [orjson.loads(x) for x in lines.splitlines()], members, device_member)


def _local_hour(r: dict[str, Any]) -> int:
    return int(r["measured_at"][11:13])


def test_population_statistics_are_in_the_documented_bands(population_run: _Run) -> None:
    run = population_run
    # Type 2 diabetes: mean 140-180 mg/dL, 1-4% below 70, under 1% below 54, 1-3 a day.
    t2 = run.cohort(condition="type_2_diabetes")
    glucose = np.array([r["value"] for r in run.of("glucose", t2) if "value" in r], float)
    per_day = len(run.of("glucose", t2)) / len(t2) / run.days
    below_70, below_54 = (glucose < 70).mean() * 100, (glucose < 54).mean() * 100
    # Hypertension cohort: 30-50% of members with a mean at or above 140/90.
    htn = run.cohort(program="hypertension")
    by_member: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in run.of("blood_pressure", htn):
        by_member[run.device_member[r["device_id"]]].append((r["systolic"], r["diastolic"]))
    means = [np.mean(v, axis=0) for v in by_member.values() if len(v) >= 10]
    uncontrolled = 100 * sum(s >= 140 or d >= 90 for s, d in means) / len(means)
    # Weight program: each member's Theil-Sen slope, % of body weight per month.
    losses = _monthly_losses(run, run.cohort(program="weight_management"))
    print(
        f"\ntype 2: {len(t2)} members, mean {glucose.mean():.1f} mg/dL, <70 {below_70:.2f}%, "
        f"<54 {below_54:.2f}%, {per_day:.2f} readings/member/day\n"
        f"hypertension: {len(means)} members, {uncontrolled:.1f}% with a mean >= 140/90\n"
        f"weight program: {len(losses)} members, median loss {np.median(losses):.2f}%/month, "
        f"{100 * np.mean((losses >= 0) & (losses <= 1)):.0f}% within 0-1%/month"
    )
    assert 140 <= glucose.mean() <= 180
    assert 1.0 <= below_70 <= 4.0
    assert 0 < below_54 < 1.0
    assert 1.0 <= per_day <= 3.0
    assert len(t2) >= 150 and len(means) >= 180
    assert 30 <= uncontrolled <= 50
    assert len(losses) >= 50
    assert 0 <= np.median(losses) <= 1
    assert np.mean((losses >= 0) & (losses <= 1)) >= 0.8


def _monthly_losses(run: _Run, members: set[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    origin = datetime.fromisoformat(START)
    for r in run.of("weight", members):
        at = datetime.fromisoformat(r["measured_at"])
        if at.year < 2015:
            continue  # a reset clock: Vigil's clock rule would use the receive time instead
        days = (at - origin).total_seconds() / 86_400
        series[run.device_member[r["device_id"]]].append((days, r["value"]))
    losses = []
    for points in series.values():
        if len(points) < 15:
            continue  # faded out early: too few weights for a slope
        t, w = np.array(points).T
        slope = theilslopes(w, t)[0]
        losses.append(-slope * 30.4375 / float(np.median(w)) * 100)
    return np.array(losses)


def test_physiology_shows_in_the_readings(population_run: _Run) -> None:
    run = population_run
    t1, t2 = run.cohort(condition="type_1_diabetes"), run.cohort(condition="type_2_diabetes")
    g1 = np.array([r["value"] for r in run.of("glucose", t1) if "value" in r], float)
    g2 = np.array([r["value"] for r in run.of("glucose", t2) if "value" in r], float)
    print(f"\ntype 1: SD {g1.std():.1f} mg/dL, {100 * (g1 < 70).mean():.2f}% below 70; "
          f"type 2: SD {g2.std():.1f} mg/dL")  # fmt: skip
    assert g1.std() > g2.std() + 5  # type 1: wider swings
    assert (g1 < 70).mean() > (g2 < 70).mean()
    pressure = run.of("blood_pressure", run.cohort(program="hypertension"))
    morning = [r["systolic"] for r in pressure if 5 <= _local_hour(r) < 11]
    evening = [r["systolic"] for r in pressure if _local_hour(r) >= 18]
    assert statistics.mean(morning) - statistics.mean(evening) >= 4  # morning surge
    severe = sum(r["systolic"] > 180 or r["diastolic"] > 120 for r in pressure)
    irregular = sum("irregular_heartbeat" in r.get("flags", ()) for r in pressure)
    assert 0 < severe < 0.01 * len(pressure)  # rare hypertensive crises
    assert 0 < irregular < 0.05 * len(pressure)
    # Heart failure: most members gain 5 lb within a week at some point (fluid retention, the
    # AAHFN call threshold), weight-program members rarely; housemates weigh 30+ lb apart.
    hf = run.cohort(condition="heart_failure")
    program = run.cohort(program="weight_management") - hf
    assert _share_with_weekly_gain(run, hf, 5.0) >= 0.45
    assert _share_with_weekly_gain(run, program, 5.0) <= 0.25
    weights = run.of("weight", hf | program)
    typical = {m: statistics.median(r["value"] for r in weights
                                    if run.device_member[r["device_id"]] == m)
               for m in {run.device_member[r["device_id"]] for r in weights}}  # fmt: skip
    strangers = sum(abs(r["value"] - typical[run.device_member[r["device_id"]]]) > 25
                    for r in weights)  # fmt: skip
    assert 0 < strangers < 0.05 * len(weights)
    # Adherence: some members fade out, some stop for a week and come back.
    counts = _daily_counts(run)
    fading = sum(sum(c[-14:]) < 0.5 * sum(c[:14]) for c in counts.values() if sum(c[:14]) >= 14)
    paused = sum(_has_pause(c) for c in counts.values())
    glucose_days = _daily_counts(run, "glucose")
    twice_a_day = sum(statistics.mean(glucose_days[m]) >= 1.5 for m in t2)
    print(
        f"\nadherence: {fading} of {len(counts)} members fading, {paused} with a pause of 5+ "
        f"days, {twice_a_day} of {len(t2)} type 2 members testing about twice a day"
    )
    assert fading >= 0.08 * len(counts)
    assert paused >= 0.08 * len(counts)
    assert twice_a_day >= 0.2 * len(t2)


def _daily_counts(run: _Run, kind: str | None = None) -> dict[str, list[int]]:
    """Readings per member and local day (of `kind`, or all)."""
    origin = datetime.fromisoformat(START).date()
    counts: dict[str, list[int]] = {m: [0] * (run.days + 1) for m in run.members}
    for r in run.readings:
        if kind is not None and r["kind"] != kind:
            continue
        day = (date.fromisoformat(r["measured_at"][:10]) - origin).days
        if 0 <= day <= run.days:
            counts[run.device_member[r["device_id"]]][day] += 1
    return counts


def _has_pause(daily: list[int]) -> bool:
    """A run of 5+ days without readings between days with readings."""
    text = "".join("x" if n else "." for n in daily)
    return re.search(r"x\.{5,}x", text) is not None


def _share_with_weekly_gain(run: _Run, members: set[str], pounds: float) -> float:
    gained = 0
    readings = run.of("weight", members)
    for member in members:
        own = [(r["measured_at"][:10], r["value"]) for r in readings
               if run.device_member[r["device_id"]] == member]  # fmt: skip
        if len(own) < 20:
            continue
        typical = statistics.median(v for _, v in own)
        daily = {d: v for d, v in own if abs(v - typical) < 20}  # not the housemate
        days = sorted(daily)
        for i, d in enumerate(days):
            week = [daily[e] for e in days[max(0, i - 7) : i]
                    if (date.fromisoformat(d) - date.fromisoformat(e)).days <= 7]  # fmt: skip
            if week and daily[d] - min(week) >= pounds:
                gained += 1
                break
    return gained / max(1, len(members))


# --- devices and load profiles -------------------------------------------------------------------


def test_meter_clock_drifts_and_resets_to_2000() -> None:
    zone = ZoneInfo("America/Chicago")
    t0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    meter = VirtualMeter("gm-1", clock=DeviceClock(anchor=t0))
    first = meter.measure(t0, zone, "glucose", value=101, unit="mg/dL")
    meter.drift_clock(500.0)  # 500 ppm: 43.2 s a day
    second = meter.measure(t0 + timedelta(days=1), zone, "glucose", value=102, unit="mg/dL")
    meter.reset_clock(t0 + timedelta(days=2))
    third = meter.measure(t0 + timedelta(days=2, minutes=5), zone, "glucose", value=103,
                          unit="mg/dL")  # fmt: skip
    assert [first["measured_at"], second["measured_at"], third["measured_at"]] == [
        "2026-03-02T06:00:00-06:00", "2026-03-03T06:00:43-06:00", "2000-01-01T00:05:00+00:00",
    ]  # fmt: skip
    assert [first["seq"], second["seq"], third["seq"]] == [1, 2, 3]
    assert meter.backlog == 3  # recorded, waiting for the broker
    meter.go_offline()
    assert not meter.online
    meter.go_online()
    assert meter.online


def test_load_profiles_have_their_shape() -> None:
    devices = [f"{p}-{i:04d}" for i in range(300) for p in ("gm", "bp", "sc")]
    start = datetime(2026, 3, 2, tzinfo=UTC)
    steady = list(steady_state(devices, start=start, duration=timedelta(hours=6), seed=1))
    expected = len(devices) * 3 * 6 / 24
    assert 0.85 * expected < len(steady) < 1.15 * expected
    assert [e.at for e in steady] == sorted(e.at for e in steady)
    peak = list(morning_peak(devices, day=date(2026, 3, 3), zone="America/Chicago", seed=1))
    local_hours = Counter(e.at.astimezone(ZoneInfo("America/Chicago")).hour for e in peak)
    assert sum(local_hours[h] for h in (6, 7, 8)) >= 0.75 * len(peak)  # most within 3 hours
    outage_end = start + timedelta(hours=36)  # a day and a half: every device has a backlog
    burst = list(
        mass_reconnect(devices, outage_start=start, outage=timedelta(hours=36),
                       reconnect_spread=timedelta(seconds=30), chunk=50, seed=1)
    )  # fmt: skip
    assert all(outage_end <= e.at <= outage_end + timedelta(seconds=31) for e in burst)
    assert len({e.device_id for e in burst}) >= 0.95 * len(devices)  # everyone flushes at once
    seqs: dict[str, list[int]] = defaultdict(list)
    for event in [*burst, *steady[:200], *peak[:200]]:
        doc = orjson.loads(event.payload)
        items = doc.get("readings", [doc])
        assert len(items) == event.readings <= min(50, MAX_CHUNK)
        for item in items:
            parse_reading(item)  # what the gateway would accept
            if event in burst:
                seqs[item["device_id"]].append(item["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())


# --- over the wire -------------------------------------------------------------------------------


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[str]:
    async with private_mosquitto(tmp_path) as url:
        yield url


def _members_for(devices: int, seed: int) -> int:
    """The fewest members whose devices number at least `devices` (member i is the same in
    every population of a seed)."""
    members = build_members(devices, seed=seed)
    total = 0
    for n, member in enumerate(members, start=1):
        total += len(member.devices)
        if total >= devices:
            return n
    raise AssertionError("unreachable")


async def test_500_devices_through_mosquitto_into_the_gateway_exactly_once(
    db: asyncpg.Pool, database_url: str, broker: str, tmp_path: Path
) -> None:
    """10% of the devices lose connectivity for 12-30 simulated hours and burst their backlog
    when back; 2% of messages arrive twice; some clocks drift or reset. Every reading the
    devices took is stored once, and every device has all its readings acked."""
    seed = 7
    members = _members_for(500, seed)
    start = (datetime.now(UTC) - timedelta(days=3)).replace(second=0, microsecond=0)
    args = ["--members", str(members), "--days", "3", "--start", start.isoformat(),
            "--seed", str(seed), "--offline-share", "0.1", "--outage-hours", "12-30",
            "--duplicate-rate", "0.02", "--clock-drift-share", "0.05",
            "--clock-reset-share", "0.01"]  # fmt: skip
    sent_file, population = tmp_path / "sent.jsonl", tmp_path / "population.yaml"
    _cli(*args, "--dry-run", "--out", str(sent_file), "--write-population", str(population))
    await import_onboarding_file(db, population)
    devices = await db.fetchval("SELECT count(*) FROM devices")
    assert 500 <= devices <= 502
    env = gateway_env(database_url, broker, f"g-{uuid.uuid4().hex[:6]}")
    worker = GatewayProcess("simulated-fleet", env)
    await worker.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            # 3 simulated days in about 9 s: an outage of 12-30 hours lasts 1.5-3.5 s for real.
            sys.executable, "-c", _SIMULATE, "simulate", *args, "--speed", "30000",
            "--resend-after", "3",
            "--drain-timeout", "60", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(150):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        assert await worker.stop() == 0
    summary = out.decode()
    print(summary)
    assert proc.returncode == 0, err.decode()[-3000:]
    sent = [orjson.loads(line) for line in sent_file.read_bytes().splitlines()]
    keys = {(r["device_id"], r["seq"]) for r in sent}
    assert len(keys) == len(sent) > 2000
    rows = await db.fetch("SELECT device_id, seq, clock_corrected, received_at FROM readings")
    assert len(rows) == len(sent)  # exactly once: no loss, no duplicate row
    assert {(r["device_id"], r["seq"]) for r in rows} == keys
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0
    assert any(r["clock_corrected"] for r in rows)  # the reset clocks were noticed
    # The readings a device took while offline came later in one {"readings": [...]} burst:
    # one message, so one receive time.
    received = {(r["device_id"], r["seq"]): r["received_at"] for r in rows}
    sim = FleetSimulation(FleetConfig(
        members=members, days=3, start=start, seed=seed,
        faults=FaultShares(offline=0.1, outage_hours=(12, 30), clock_drift=0.05,
                           clock_reset=0.01, duplicate_rate=0.02),
    ))  # fmt: skip
    outages = {d: p.outages[0] for d, p in sim.plans.items() if p.outages}
    assert len(outages) == round(0.1 * devices)
    while_offline: dict[str, list[int]] = defaultdict(list)
    for r in sim.readings():
        if r.device_id in outages and outages[r.device_id][0] <= r.at < outages[r.device_id][1]:
            while_offline[r.device_id].append(r.seq)
    several = {d: seqs for d, seqs in while_offline.items() if len(seqs) >= 2}
    assert len(several) >= 10
    for device, seqs in several.items():
        assert len({received[device, s] for s in seqs}) == 1, device
    fully = re.search(r"devices fully acked (\d+)/(\d+)", summary)
    bursts = re.search(r"burst chunks from (\d+) devices", summary)
    acks = re.search(r"acks: (\d+) accepted, (\d+) duplicate, (\d+) rejected", summary)
    assert fully and bursts and acks, summary
    assert fully.group(1) == fully.group(2) == str(devices)
    # Each reading's first verdict: accepted, or duplicate when its first ack was lost (the
    # device went offline before it came) and a resend found it stored.
    assert int(acks.group(1)) + int(acks.group(2)) == len(sent) and int(acks.group(3)) == 0
    duplicated = re.search(r"(\d+) duplicated by the network", summary)
    assert duplicated and int(duplicated.group(1)) > 0  # and still one row per reading
    # Every offline device that measured during its outage flushed a burst when back.
    assert int(bursts.group(1)) >= len(while_offline) >= 0.5 * len(outages)
    assert "unacked 0" in summary
