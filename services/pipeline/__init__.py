"""The transport-independent reading pipeline: validate -> normalize -> dedupe -> store -> hand-off.

MQTT, HTTP, the BLE relay, reading files and quarantine replay are thin adapters onto
`ReadingPipeline` (see docs/architecture.md).
"""

from services.pipeline.core import BatchResult, Incoming, Outcome, ReadingPipeline
from services.pipeline.sink import NullSink, ReadingSink, StoredReading

__all__ = [
    "BatchResult",
    "Incoming",
    "NullSink",
    "Outcome",
    "ReadingPipeline",
    "ReadingSink",
    "StoredReading",
]
