"""Simulated members and devices for the demo, tests and benchmarks (docs/simulators.md).

Simulators are devices: they reach Vigil only over the wire (MQTT, HTTP, the BLE transport
interface, reading files), never by importing its storage, pipeline or rules, so what they prove
is real. Nothing in this package imports `services`, `alerting`, `device_gateway` or
`coach_console` (tests/test_simulators.py checks it).

- `population`, `readings`: the demo's simple seeded population and reading stream (`vigil demo`).
- `physiology`: glucose, blood pressure, weight and adherence models (pure, seeded).
- `profiles`: the population mix and risk classes; members and their onboarding file.
- `member`: a member's days: when they measure and what the devices show.
- `devices`: device clocks (drift, reset to 2000-01-01), outages, duplicates, credentials.
- `scenario`: scenario files scripting exact readings and device faults.
- `fleet`: the engine: all readings and device events in time order, dry-run files (pure).
- `meter`: the virtual MQTT device (store-and-forward, resend, bursts, duplicates).
- `runner`: plays a fleet over MQTT at a simulated speed (`vigil simulate`).
- `load`: benchmark load profiles (steady state, morning peak, mass reconnect).
- `ble_frames`, `ble_peripheral`: simulated BLE meters, cuffs and scales for the BLE bridge.
"""

from simulators.population import DEMO_SEED, generate_population
from simulators.readings import ReadingSimulator, SimulatedReading

__all__ = ["DEMO_SEED", "ReadingSimulator", "SimulatedReading", "generate_population"]
