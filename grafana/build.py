"""Generate the committed dashboards: ``python -m grafana.build`` (``--check`` only compares).

grafana/dashboards/*.json is what Grafana's file provisioning loads (docker-compose.yml mounts
it); it is generated, never edited by hand. tests/test_grafana.py regenerates it and fails when
the committed files differ, so a change to a builder or to a rule file (the thresholds) cannot
be forgotten.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana.common import AGENCY, AGENCY_DS, TENANT, TENANT_DS
from grafana.kinds import KIND_DASHBOARDS, KindDashboard, build_kind_dashboard
from grafana.model import Json, dashboard_json
from grafana.wall import build_wall

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"


def agency_dashboards() -> dict[str, Json]:
    """File name → dashboard JSON for the agency organisation (provisioned from files)."""
    out = {"wall.json": build_wall().to_json(AGENCY_DS)}
    for spec in KIND_DASHBOARDS:
        out[f"{spec.file}.json"] = build_kind_dashboard(spec, AGENCY).to_json(AGENCY_DS)
    return out


def tenant_dashboards(kinds: Sequence[str] | None = None) -> list[Json]:
    """A tenant organisation's dashboards: the per-kind ones it has devices of (all if
    ``kinds`` is None), against its own data source, without tenant or region variables."""
    wanted = None if kinds is None else set(kinds)
    specs: list[KindDashboard] = [
        s for s in KIND_DASHBOARDS if wanted is None or wanted & set(s.kinds)
    ]
    return [build_kind_dashboard(s, TENANT).to_json(TENANT_DS) for s in specs]


def render() -> dict[str, str]:
    return {name: dashboard_json(doc) for name, doc in agency_dashboards().items()}


def write(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Write every dashboard; remove generated files that no longer have a builder."""
    directory.mkdir(parents=True, exist_ok=True)
    rendered = render()
    written = []
    for name, text in sorted(rendered.items()):
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    for stale in sorted(directory.glob("*.json")):
        if stale.name not in rendered:
            stale.unlink()
            written.append(stale)
    return written


def differences(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Files that are missing, stale or extra compared with what the builders produce."""
    rendered = render()
    problems = []
    for name, text in sorted(rendered.items()):
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from the builders' output")
    for path in sorted(directory.glob("*.json")):
        if path.name not in rendered:
            problems.append(f"{path.name}: not produced by any builder")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python -m grafana.build", file=sys.stderr)
        return 1 if problems else 0
    for path in write():
        print(f"wrote {path.relative_to(DASHBOARD_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
