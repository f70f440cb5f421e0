"""The HJ 212-2017 checksum (Appendix A, "ANSI CRC16").

It is *not* Modbus CRC-16: for each byte the standard sets ``reg = (reg >> 8) ^ byte`` where Modbus
does ``reg ^= byte``. Because the low byte of the register is dropped at every step, the result is
always one of the 256 entries of the bit-wise table below, so the check is about as strong as an
8-bit one: any single-byte error is caught (the high byte of a table entry is a bijection of its
index), but roughly 1 in 256 random corruptions is not.
"""

from __future__ import annotations

POLY = 0xA001  # reflected 0x8005
INIT = 0xFFFF


def _entry(index: int) -> int:
    reg = index
    for _ in range(8):
        reg = (reg >> 1) ^ POLY if reg & 1 else reg >> 1
    return reg


# reg' = TABLE[(reg >> 8) ^ byte] is exactly the standard's eight shift-and-xor steps, one lookup.
_TABLE = tuple(_entry(i) for i in range(256))


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC of ``data`` (the data segment only, as bytes) as HJ 212-2017 Appendix A defines it."""
    reg = INIT
    table = _TABLE
    for byte in data:
        reg = table[(reg >> 8) ^ byte]
    return reg


def crc16_reference(data: bytes | bytearray | memoryview) -> int:
    """The standard's algorithm step by step; the fast :func:`crc16` is tested against it."""
    reg = INIT
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            reg = (reg >> 1) ^ POLY if reg & 1 else reg >> 1
    return reg & 0xFFFF


def format_crc(crc: int) -> str:
    """Four upper-case hex digits, high byte first, as the frame carries them."""
    return f"{crc:04X}"
