"""HJ 212-2017 code tables as data: commands (Table 9), reply codes (Tables 6, 7), data flags
(Table 8), and how the platform treats each flag.

Kept in one place so the parser, the reply builder and the collectors look things up instead of
spreading ``if flag == "T"`` through the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum, StrEnum
from types import MappingProxyType


class Command(StrEnum):
    """Command codes, CN (Table 9). The value is the 4-digit code as sent."""

    SET_TIMEOUT = "1000"
    SITE_TIME = "1011"  # get (platform) / upload (site)
    SET_TIME = "1012"
    TIME_CALIBRATION_REQUEST = "1013"  # site -> platform notification
    RTD_INTERVAL = "1061"  # get / upload real-time interval
    SET_RTD_INTERVAL = "1062"
    MIN_INTERVAL = "1063"  # get / upload minute-data interval
    SET_MIN_INTERVAL = "1064"
    SET_PASSWORD = "1072"
    REALTIME_DATA = "2011"
    STOP_REALTIME_DATA = "2012"
    RUNNING_STATE = "2021"
    STOP_RUNNING_STATE = "2022"
    DAILY_DATA = "2031"
    DAILY_RUNNING_TIME = "2041"
    MINUTE_DATA = "2051"
    HOURLY_DATA = "2061"
    POWER_ON_TIME = "2081"
    CALIBRATE = "3011"
    SAMPLE_NOW = "3012"
    CLEAN = "3013"
    COMPARISON_SAMPLE = "3014"
    OVER_LIMIT_SAMPLE = "3015"
    SET_SAMPLING_PERIOD = "3016"
    SAMPLING_PERIOD = "3017"
    SAMPLE_OUTPUT_TIME = "3018"
    INSTRUMENT_ID = "3019"
    SITE_INFO = "3020"
    SET_SITE_PARAMETERS = "3021"
    REQUEST_REPLY = "9011"  # QnRtn
    EXECUTION_RESULT = "9012"  # ExeRtn
    NOTIFICATION_REPLY = "9013"
    DATA_REPLY = "9014"


class QnRtn(IntEnum):
    """Request reply codes carried by CN 9011 (Table 7)."""

    READY = 1
    REFUSED = 2
    PW_ERROR = 3
    MN_ERROR = 4
    ST_ERROR = 5
    FLAG_ERROR = 6
    QN_ERROR = 7
    CN_ERROR = 8
    CRC_ERROR = 9
    UNKNOWN = 100


class ExeRtn(IntEnum):
    """Execution result codes carried by CN 9012 (Table 6)."""

    SUCCESS = 1
    FAILED = 2
    CONDITION_ERROR = 3
    TIMEOUT = 4
    BUSY = 5
    FAULT = 6
    NO_DATA = 100


# The replies themselves: acknowledging one would never end.
REPLY_COMMANDS = frozenset(
    {
        Command.REQUEST_REPLY,
        Command.EXECUTION_RESULT,
        Command.NOTIFICATION_REPLY,
        Command.DATA_REPLY,
    }
)
# Site -> platform notifications, answered with 9013; every other upload is answered with 9014.
NOTIFICATION_COMMANDS = frozenset({Command.TIME_CALIBRATION_REQUEST})

# System code for replies and other system interaction (Table 5).
ST_SYSTEM = "91"


@dataclass(frozen=True, slots=True)
class DataCommandSpec:
    """What a measurement upload means: which field holds the value and what period it covers."""

    description: str
    value_field: str  # Rtd for an instant, Avg for an interval
    period: timedelta | None  # None: an instant (2011) or set per system (2051, MinInterval)
    data_time_is_start: bool  # DataTime is the interval's start for aggregates (Table 4)


DATA_COMMANDS: Mapping[Command, DataCommandSpec] = MappingProxyType(
    {
        Command.REALTIME_DATA: DataCommandSpec("real-time data", "Rtd", None, False),
        Command.MINUTE_DATA: DataCommandSpec("minute data", "Avg", None, True),
        Command.HOURLY_DATA: DataCommandSpec("hourly data", "Avg", timedelta(hours=1), True),
        Command.DAILY_DATA: DataCommandSpec("daily data", "Avg", timedelta(days=1), True),
    }
)

# Per-parameter fields (Table 4) whose values are numbers; Zs* are the converted variants.
NUMERIC_FIELDS = frozenset({"Rtd", "Min", "Avg", "Max", "Cou", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax"})


class DataFlag(StrEnum):
    """Data flags, ``xxxxxx-Flag`` (Table 8)."""

    NORMAL = "N"
    STOPPED = "F"
    MAINTENANCE = "M"
    MANUAL = "S"
    FAULT = "D"
    CALIBRATING = "C"
    OVER_RANGE = "T"
    COMMS_ERROR = "B"


class Compliance(StrEnum):
    """How a value with this flag enters compliance checks."""

    EVALUATE = "evaluate"  # compare with the limits
    EXCLUDE = "exclude"  # keep and store, but do not judge compliance on it
    OVER_RANGE = "over_range"  # at or above full scale: an exceedance, not an invalid value


@dataclass(frozen=True, slots=True)
class FlagRule:
    meaning: str
    compliance: Compliance
    suggested_alert: str | None  # the device-health alert the flag itself suggests


DATA_FLAG_RULES: Mapping[DataFlag, FlagRule] = MappingProxyType(
    {
        DataFlag.NORMAL: FlagRule("instrument normal", Compliance.EVALUATE, None),
        DataFlag.STOPPED: FlagRule("instrument stopped", Compliance.EXCLUDE, "offline"),
        DataFlag.MAINTENANCE: FlagRule("produced during maintenance", Compliance.EXCLUDE, None),
        DataFlag.MANUAL: FlagRule("manually entered set value", Compliance.EXCLUDE, None),
        DataFlag.FAULT: FlagRule("instrument fault", Compliance.EXCLUDE, "device_fault"),
        DataFlag.CALIBRATING: FlagRule("calibrating", Compliance.EXCLUDE, None),
        DataFlag.OVER_RANGE: FlagRule(
            "reading exceeds the measuring range", Compliance.OVER_RANGE, None
        ),
        DataFlag.COMMS_ERROR: FlagRule(
            "instrument to data-logger communication error", Compliance.EXCLUDE, "comms"
        ),
    }
)
