"""HJ 212-2017 (污染物在线监控（监测）系统数据传输标准) codec, pure and sans-IO.

Bytes in, frames and typed packets out, replies back as bytes: no sockets, no clocks, no imports
from the rest of Weijian beyond ``protocols.catalog``, so the collector, the simulated stations
and the tests share one implementation. See docs/hj212.md.
"""

from protocols.hj212.codes import CodeMap, CodeMapError, CodeMapping, load_code_map
from protocols.hj212.crc import crc16
from protocols.hj212.frame import (
    MAX_SEGMENT,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorReason,
    decode_frame,
    encode_frame,
)
from protocols.hj212.reply import (
    data_reply,
    execution_result,
    notification_reply,
    reply_for,
    request_reply,
)
from protocols.hj212.segment import (
    CHINA_TZ,
    Packet,
    ParamGroup,
    ParamValue,
    SegmentError,
    SegmentErrorReason,
    format_qn,
    format_segment,
    format_time,
    parse_segment,
)
from protocols.hj212.tables import (
    DATA_COMMANDS,
    DATA_FLAG_RULES,
    Command,
    Compliance,
    DataFlag,
    ExeRtn,
    QnRtn,
)

__all__ = [
    "CHINA_TZ",
    "DATA_COMMANDS",
    "DATA_FLAG_RULES",
    "MAX_SEGMENT",
    "CodeMap",
    "CodeMapError",
    "CodeMapping",
    "Command",
    "Compliance",
    "DataFlag",
    "ExeRtn",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameErrorReason",
    "Packet",
    "ParamGroup",
    "ParamValue",
    "QnRtn",
    "SegmentError",
    "SegmentErrorReason",
    "crc16",
    "data_reply",
    "decode_frame",
    "encode_frame",
    "execution_result",
    "format_qn",
    "format_segment",
    "format_time",
    "load_code_map",
    "notification_reply",
    "parse_segment",
    "reply_for",
    "request_reply",
]
