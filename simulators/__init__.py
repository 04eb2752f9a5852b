"""Simulated members and devices for the demo, tests and benchmarks.

Simulators are devices: they reach Vigil only over the wire (MQTT, HTTP, the BLE transport
interface, reading files), never by importing its storage, pipeline or rules, so what they prove
is real. Nothing in this package imports `services`, `alerting` or `device_gateway`.

- `population`: a seeded onboarding file (clients, coaches, members, enrollments, devices).
- `readings`: seeded reading payloads (the reading-file / MQTT JSON format) for that population.
"""

from simulators.population import DEMO_SEED, generate_population
from simulators.readings import ReadingSimulator, SimulatedReading

__all__ = ["DEMO_SEED", "ReadingSimulator", "SimulatedReading", "generate_population"]
