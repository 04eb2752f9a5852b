"""Bluetooth LE medical devices, sans-IO: GATT frame decoders, RACP requests and responses, and
the mapping of decoded measurements onto Vigil reading payloads. No transport is imported here;
the BLE client (bleak) calls these functions with the bytes it receives.
"""

from .blood_pressure import BloodPressureMeasurement, parse_blood_pressure_measurement
from .errors import (
    BleError,
    GattDecodeError,
    GattEncodeError,
    MalformedFrame,
    ReadingMappingError,
    TruncatedFrame,
)
from .glucose import (
    GlucoseContext,
    GlucoseMeasurement,
    GlucoseRecord,
    GlucoseRecordMatcher,
    SensorStatus,
    parse_glucose_context,
    parse_glucose_measurement,
)
from .ieee11073 import SpecialValue, decode_float, decode_sfloat
from .racp import (
    RacpOpcode,
    RacpOperator,
    RacpRecordCount,
    RacpResponse,
    RacpResponseCode,
    decode_racp_response,
    encode_racp_abort,
    encode_racp_count_all,
    encode_racp_count_from,
    encode_racp_report_all,
    encode_racp_report_from,
)
from .to_reading import blood_pressure_to_payload, glucose_to_payload, weight_to_payload
from .transport import (
    BleTransportError,
    BluetoothUnavailable,
    ConnectFailed,
    DeviceNotFound,
    DiscoveredDevice,
    GattOperationFailed,
    GattSession,
    GattTimeout,
    GattTransport,
    LinkLost,
    PairingRequired,
)
from .weight import WeightMeasurement, parse_weight_measurement

__all__ = [
    "BleError",
    "BleTransportError",
    "BloodPressureMeasurement",
    "BluetoothUnavailable",
    "ConnectFailed",
    "DeviceNotFound",
    "DiscoveredDevice",
    "GattDecodeError",
    "GattEncodeError",
    "GattOperationFailed",
    "GattSession",
    "GattTimeout",
    "GattTransport",
    "GlucoseContext",
    "GlucoseMeasurement",
    "GlucoseRecord",
    "GlucoseRecordMatcher",
    "LinkLost",
    "MalformedFrame",
    "PairingRequired",
    "RacpOpcode",
    "RacpOperator",
    "RacpRecordCount",
    "RacpResponse",
    "RacpResponseCode",
    "ReadingMappingError",
    "SensorStatus",
    "SpecialValue",
    "TruncatedFrame",
    "WeightMeasurement",
    "blood_pressure_to_payload",
    "decode_float",
    "decode_racp_response",
    "decode_sfloat",
    "encode_racp_abort",
    "encode_racp_count_all",
    "encode_racp_count_from",
    "encode_racp_report_all",
    "encode_racp_report_from",
    "glucose_to_payload",
    "parse_blood_pressure_measurement",
    "parse_glucose_context",
    "parse_glucose_measurement",
    "parse_weight_measurement",
    "weight_to_payload",
]
