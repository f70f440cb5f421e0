"""Modbus collector (TCP, RTU over TCP, RTU on a serial line) and the onboarding probe.

See docs/modbus.md.
"""

from collectors.modbus.collector import ModbusCollector, ModbusStats
from collectors.modbus.probe import ProbeReport, format_report, probe
from collectors.modbus.targets import ModbusTarget, TargetSource, target_from_registry

__all__ = [
    "ModbusCollector",
    "ModbusStats",
    "ModbusTarget",
    "ProbeReport",
    "TargetSource",
    "format_report",
    "probe",
    "target_from_registry",
]
