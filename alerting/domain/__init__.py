"""Domain monitors: stateful, per device or site, reporting findings in the alert vocabulary.

* :class:`SterilizerMonitor` — cycle validation (WS 310.2/310.3): programme, +3 °C band, hold
  time, saturated steam, the daily B-D test; a :class:`CycleRecord` per cycle.
* :class:`DoseMonitor` — cumulative personal dose against the period investigation level and the
  annual and five-year limits (GB 18871, GBZ 128).
* :class:`RecordsMonitor` — records not uploaded within N hours (medical waste, disinfection).

Dose rate outside shielded rooms is a threshold rule (alerting/data/rules), not a monitor here.
"""

from alerting.domain.dose import DOSE_LIMITS, DoseLimit, DoseMonitor, DosePeriod
from alerting.domain.findings import Finding
from alerting.domain.records import (
    RecordEvent,
    RecordRule,
    RecordRules,
    RecordsMonitor,
    default_record_rules,
    load_record_rules,
)
from alerting.domain.sterilizer import (
    CycleRecord,
    SterilizationTable,
    SterilizerMonitor,
    default_sterilization_table,
    load_sterilization_table,
)

__all__ = [
    "DOSE_LIMITS",
    "CycleRecord",
    "DoseLimit",
    "DoseMonitor",
    "DosePeriod",
    "Finding",
    "RecordEvent",
    "RecordRule",
    "RecordRules",
    "RecordsMonitor",
    "SterilizationTable",
    "SterilizerMonitor",
    "default_record_rules",
    "default_sterilization_table",
    "load_record_rules",
    "load_sterilization_table",
]
