"""Device lookup and validation on the ingest path with 100,000 registered devices.

Measured in one run, per reading, on the same readings:
  (a) lookup: ``RegistryDirectory.get`` (the registry cached in memory) — what the registry adds
      to every reading;
  (b) validation: ``ReadingValidator.validate`` for the device found;
  (c) the collectors' whole in-process ingest path: ``Ingestor.identify`` + ``Ingestor.submit``
      (lookup, validation, line-protocol encoding, spool append with fsync=interval) — the
      reference the lookup is compared with;
and the cost of keeping the cache exact: the full load at start, a poll when nothing changed,
and an incremental refresh after one device changed (what a collector does every second).

Usage: python benchmarks/registry.py [--devices 100000] [--readings 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from collectors.metrics import Metrics  # noqa: E402
from collectors.pipeline import Ingestor  # noqa: E402
from collectors.spool import Spool  # noqa: E402
from gateway.registry.database import Registry, bump_revision, sqlite_url  # noqa: E402
from gateway.registry.directory import RegistryDirectory  # noqa: E402
from gateway.registry.models import Device, Site, Tenant  # noqa: E402
from protocols.catalog import default_catalog  # noqa: E402
from protocols.reading import ReadingValidator  # noqa: E402
from weijian.config import FsyncPolicy  # noqa: E402

SITES = 1000


def populate(registry: Registry, devices: int) -> float:
    t0 = time.perf_counter()
    with registry.session() as s, s.begin():
        s.add(Tenant(id="bench", name="Bench"))
        s.flush()
        s.execute(
            insert(Site),
            [
                {
                    "id": f"site-{i}",
                    "tenant_id": "bench",
                    "name": f"Site {i}",
                    "region_code": f"3301{i % 100:02d}",
                    "venue_type": "public_place",
                    "attributes": {},
                }
                for i in range(SITES)
            ],
        )
        rev = bump_revision(s)
        for start in range(0, devices, 10_000):
            s.execute(
                insert(Device),
                [
                    {
                        "id": f"dev-{i:06d}",
                        "site_id": f"site-{i % SITES}",
                        "kind": "air_monitor",
                        "profile": "air_monitor_iaq8",
                        "protocol": "mqtt",
                        "connection": {},
                        "interval_s": 60.0,
                        "status": "active",
                        "revision": rev,
                    }
                    for i in range(start, min(start + 10_000, devices))
                ],
            )
    return time.perf_counter() - t0


def per_op_us(fn, items) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items) * 1e6


async def ingest_path_us(
    directory: RegistryDirectory, ids: list[str], raw: dict, tmp: Path
) -> float:
    validator = ReadingValidator(default_catalog())
    metrics = Metrics()
    async with Spool(tmp / "spool", fsync=FsyncPolicy.INTERVAL) as spool:
        ingestor = Ingestor(directory, validator, spool, metrics)
        t0 = time.perf_counter()
        futures = []
        for n, device in enumerate(ids):
            info = ingestor.identify("mqtt", device)
            outcome = ingestor.submit("mqtt", info, [raw])
            if n % 1000 == 0 and outcome.durable is not None:
                futures.append(outcome.durable)
        elapsed = time.perf_counter() - t0
        await asyncio.gather(*futures)
    return elapsed / len(ids) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--readings", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="weijian-registry-bench-") as tmpdir:
        tmp = Path(tmpdir)
        registry = Registry.open(sqlite_url(tmp / "registry.db"))
        filled = populate(registry, args.devices)
        directory = RegistryDirectory(registry)
        t0 = time.perf_counter()
        directory.refresh()
        full_load = time.perf_counter() - t0
        assert len(directory) == args.devices

        rng = random.Random(1)
        ids = [f"dev-{rng.randrange(args.devices):06d}" for _ in range(args.readings)]
        raw = {"fields": {"co2_ppm": 612.0, "pm25_ug_m3": 12.0, "temperature_c": 22.5}}
        validator = ReadingValidator(default_catalog())
        infos = [directory.get(d) for d in ids]
        lookup = per_op_us(directory.get, ids)
        validate = per_op_us(lambda info: validator.validate(info, raw), infos)
        path = asyncio.run(ingest_path_us(directory, ids, raw, tmp))

        polls = 200
        t0 = time.perf_counter()
        for _ in range(polls):
            directory.refresh()
        poll_ms = (time.perf_counter() - t0) / polls * 1e3
        with registry.session() as s, s.begin():
            device = s.get(Device, "dev-000042")
            device.status = "disabled"
            device.revision = bump_revision(s)
        t0 = time.perf_counter()
        changed = directory.refresh()
        incremental_ms = (time.perf_counter() - t0) * 1e3
        assert changed == 1
        assert directory.get("dev-000042") is None
        registry.close()

    print(f"# registry: {args.devices:,} devices (SQLite), {args.readings:,} readings")
    print(f"registry filled in {filled:.1f} s; cache full load {full_load * 1e3:.0f} ms")
    print(f"(a) lookup             {lookup:8.3f} µs/reading")
    print(f"(b) validation         {validate:8.3f} µs/reading")
    print(f"(c) ingest path        {path:8.3f} µs/reading  (identify+validate+encode+spool)")
    print(f"lookup / ingest path   {lookup / path:8.4f}")
    print(
        f"cache upkeep: poll with no change {poll_ms:.3f} ms; "
        f"one device changed {incremental_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
