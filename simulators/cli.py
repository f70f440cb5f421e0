"""``weijian simulate SCENARIO``: run a scenario against a running platform, or offline.

Wired into the ``weijian`` command by ``add_simulate_parser(subparsers)``; the handler is
``cmd_simulate(args) -> int`` (set as ``func`` on the parser). Live, it onboards the scenario
through the gateway and drives every device over its protocol (``simulators.runner``); with
``--offline`` it writes the scenario's readings for a time range as JSON Lines, no network at all,
plus the ground truth (``simulators.faults``). ``--check`` validates and summarises a scenario.

Secrets come from the environment rather than the command line where possible:
``WEIJIAN_GATEWAY_TOKEN``, or ``WEIJIAN_GATEWAY_USER`` + ``WEIJIAN_GATEWAY_PASSWORD``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from simulators.faults import (
    Malformed,
    generate,
    ground_truth,
    iso,
    parse_duration,
    parse_instant,
    write_ground_truth,
)
from simulators.scenario import Scenario, ScenarioError, load_scenario


def add_simulate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``simulate`` to an ``argparse`` sub-parser set; returns the new parser."""
    p = subparsers.add_parser(
        "simulate",
        help="run a scenario's simulated devices against a platform (or --offline)",
        description="Onboard a scenario through the gateway and drive its devices over their "
        "protocols with its faults, writing the ground truth (docs/scenarios.md).",
    )
    p.add_argument("scenario", help="scenario name (simulators/scenarios/) or YAML path")
    p.add_argument(
        "--gateway-url", default=os.environ.get("WEIJIAN_GATEWAY_URL", "http://127.0.0.1:8080")
    )
    p.add_argument(
        "--token",
        default=os.environ.get("WEIJIAN_GATEWAY_TOKEN"),
        help="API token (or WEIJIAN_GATEWAY_TOKEN)",
    )
    p.add_argument(
        "--username",
        default=os.environ.get("WEIJIAN_GATEWAY_USER"),
        help="staff user (or WEIJIAN_GATEWAY_USER; password: WEIJIAN_GATEWAY_PASSWORD)",
    )
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--coap-host", default="127.0.0.1")
    p.add_argument("--coap-port", type=int, default=5683)
    p.add_argument("--hj212-host", default="127.0.0.1")
    p.add_argument("--hj212-port", type=int, default=9212)
    p.add_argument("--modbus-bind", default="127.0.0.1", help="where Modbus servers listen")
    p.add_argument("--modbus-public-host", help="the address the collector polls (default bind)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument(
        "--duration",
        help="how long to run (real time), e.g. 600, '10m'; live: "
        "default until Ctrl-C; offline: simulated, default the scenario's",
    )
    p.add_argument("--ground-truth", type=Path, help="where to write the ground truth (JSONL)")
    p.add_argument("--report-every", type=float, default=10.0, help="seconds between rate lines")
    p.add_argument("--offline", action="store_true", help="no network: write readings as JSONL")
    p.add_argument("--start", help="offline (or live) simulated start, ISO 8601 with offset")
    p.add_argument("--output", type=Path, help="offline: readings file (default stdout)")
    p.add_argument("--check", action="store_true", help="validate and summarise, then exit")
    p.set_defaults(func=cmd_simulate)
    return p


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.check:
            print(summary(scenario))
            return 0
        if args.offline:
            return _offline(scenario, args)
        return asyncio.run(_live(scenario, args))
    except (ValueError, RuntimeError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # offline output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def summary(scenario: Scenario) -> str:
    kinds = Counter(d.kind for d in scenario.devices)
    protocols = scenario.protocols()
    faults = Counter(f.fault_type.name for f in scenario.faults)
    lines = [
        f"{scenario.name}: {len(scenario.tenants)} tenants, {len(scenario.sites)} sites, "
        f"{len(scenario.devices)} devices",
        "  kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
        "  protocols: " + ", ".join(f"{k} {n}" for k, n in sorted(protocols.items())),
        "  readings/s: " + f"{sum(1.0 / (d.interval_s or 60.0) for d in scenario.devices):.1f}",
    ]
    if faults:
        lines.append("  faults: " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())))
    return "\n".join(lines)


def _offline(scenario: Scenario, args: argparse.Namespace) -> int:
    start = parse_instant(args.start) if args.start else None
    t0, t1 = scenario.time_range(start, None, args.duration)
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    counts: Counter[str] = Counter()
    began = time.perf_counter()
    try:
        for record in generate(scenario, t0, t1):
            row: dict[str, Any] = {"device": record.device, "t": iso(record.t.timestamp())}
            if record.values is None:
                row["silent"] = True
                counts["silent"] += 1
            elif isinstance(record.values, Malformed):
                row["malformed"] = record.values.form
                row["payload"] = record.values.json_payload().decode("utf-8", "replace")
                counts["malformed"] += 1
            else:
                if record.ts != record.t:
                    row["ts"] = iso(record.ts.timestamp())
                row["fields"] = record.values
                counts["readings"] += 1
            out.write(orjson.dumps(row) + b"\n")
    finally:
        if args.output:
            out.close()
    truth = args.ground_truth or Path(f"{scenario.name}.truth.jsonl")
    rows = ground_truth(scenario.name, scenario.plan(t0), t0.timestamp(), t1.timestamp())
    write_ground_truth(rows, truth)
    seconds = time.perf_counter() - began
    total = sum(counts.values())
    print(
        f"{scenario.name}: {t0.isoformat()} .. {t1.isoformat()}: {counts['readings']} readings, "
        f"{counts['silent']} silent ticks, {counts['malformed']} malformed in {seconds:.1f} s "
        f"({total / max(seconds, 1e-9):,.0f} ticks/s); ground truth: {len(rows)} faults in "
        f"{truth}",
        file=sys.stderr,
    )
    return 0


async def _live(scenario: Scenario, args: argparse.Namespace) -> int:
    from simulators.runner import run_scenario

    password = os.environ.get("WEIJIAN_GATEWAY_PASSWORD")
    if args.token is None and (args.username is None or password is None):
        raise ValueError(
            "give --token (or WEIJIAN_GATEWAY_TOKEN), or --username with "
            "WEIJIAN_GATEWAY_PASSWORD in the environment"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    duration = parse_duration(args.duration) if args.duration is not None else None
    report = await run_scenario(
        scenario,
        gateway_url=args.gateway_url,
        token=args.token,
        username=args.username,
        password=password,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        speed=args.speed,
        duration=duration,
        ground_truth_path=args.ground_truth,
        start=parse_instant(args.start) if args.start else None,
        report_every_s=args.report_every,
        stop=stop,
        coap_host=args.coap_host,
        coap_port=args.coap_port,
        hj212_host=args.hj212_host,
        hj212_port=args.hj212_port,
        modbus_bind=args.modbus_bind,
        modbus_public_host=args.modbus_public_host,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    print(
        "stopped: "
        + "; ".join(r.line() for r in report.rates)
        + f"; CPU {100 * report.cpu_fraction:.0f} %; ground truth {report.ground_truth} "
        f"(simulated {report.start:%Y-%m-%d %H:%M:%S}Z to "
        f"{(report.end or datetime.now(UTC)):%Y-%m-%d %H:%M:%S}Z)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.cli SCENARIO …`` (the same as ``weijian simulate``)."""
    parser = argparse.ArgumentParser(prog="python -m simulators.cli")
    sub = parser.add_subparsers(dest="command")
    add_simulate_parser(sub)
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
