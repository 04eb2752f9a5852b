"""Topic names of the v1 device protocol (sans-IO).

Under a configurable prefix (default `vigil/v1`):
- `{prefix}/devices/{device_id}/readings`  device -> Vigil: one reading or {"readings": [...]}
- `{prefix}/devices/{device_id}/acks`      Vigil -> device, after the database commit (QoS 0)
- `{prefix}/devices/{device_id}/messages`  Vigil -> device: nudges and coach messages
- `{prefix}/devices/{device_id}/status`    device -> Vigil: battery, signal, firmware; last will
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

DEFAULT_PREFIX: Final = "vigil/v1"
Channel = Literal["readings", "acks", "messages", "status"]
_CHANNELS: Final = frozenset({"readings", "acks", "messages", "status"})


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self.prefix}/devices/{device_id}/{channel}"

    def all_devices(self, channel: Channel) -> str:
        return f"{self.prefix}/devices/+/{channel}"

    def shared(self, group: str, channel: Channel) -> str:
        """The shared subscription N gateway workers split (MQTT 5 `$share`)."""
        return f"$share/{group}/{self.all_devices(channel)}"

    def parse(self, topic: str) -> tuple[str, Channel] | None:
        """`{prefix}/devices/{id}/{channel}` -> (id, channel); None for anything else."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head) :].split("/")
        if len(rest) != 2 or not rest[0] or rest[1] not in _CHANNELS:
            return None
        return rest[0], rest[1]  # type: ignore[return-value]
