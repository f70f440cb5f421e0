"""Replies as complete frames: what the platform owes a station whose Flag has A set (9013, 9014),
and what a station answers a platform command with (9011, 9012; used by simulated stations).

Every reply echoes the request's QN, PW and MN, uses ST=91 (system interaction) and Flag=4
(HJ 212-2017, no reply requested: replies are never acknowledged), as in the standard's examples.
"""

from __future__ import annotations

from protocols.hj212.frame import encode_frame
from protocols.hj212.segment import FLAG_VERSION_2017, Packet, format_segment
from protocols.hj212.tables import (
    NOTIFICATION_COMMANDS,
    REPLY_COMMANDS,
    ST_SYSTEM,
    Command,
    ExeRtn,
    QnRtn,
)

REPLY_FLAG = FLAG_VERSION_2017 << 2  # = 4


def _reply(request: Packet, command: Command, cp: dict[str, str] | None = None) -> bytes:
    packet = Packet(
        qn=request.qn,
        st=ST_SYSTEM,
        cn=command.value,
        pw=request.pw,
        mn=request.mn,
        flag=REPLY_FLAG,
        cp_fields=cp or {},
    )
    return encode_frame(format_segment(packet))


def data_reply(request: Packet) -> bytes:
    """CN 9014: the platform received (and stored) the data upload ``request``."""
    return _reply(request, Command.DATA_REPLY)


def notification_reply(request: Packet) -> bytes:
    """CN 9013: the platform received the notification ``request``."""
    return _reply(request, Command.NOTIFICATION_REPLY)


def request_reply(request: Packet, qn_rtn: QnRtn) -> bytes:
    """CN 9011 from a station: whether it will execute the platform's command (QnRtn)."""
    return _reply(request, Command.REQUEST_REPLY, {"QnRtn": str(int(qn_rtn))})


def execution_result(request: Packet, exe_rtn: ExeRtn) -> bytes:
    """CN 9012 from a station: how the platform's command ended (ExeRtn)."""
    return _reply(request, Command.EXECUTION_RESULT, {"ExeRtn": str(int(exe_rtn))})


def reply_for(packet: Packet) -> bytes | None:
    """The frame the platform must send back for ``packet`` from a station, or None.

    None when the Flag does not ask for a reply, or the packet is itself a reply. Notifications
    get 9013; every other upload (data, site time, intervals, site information) gets 9014. Send it
    only once the data is durable: the reply tells the station it may forget the packet.
    """
    if not packet.needs_reply or packet.cn in REPLY_COMMANDS:
        return None
    if packet.cn in NOTIFICATION_COMMANDS:
        return notification_reply(packet)
    return data_reply(packet)
