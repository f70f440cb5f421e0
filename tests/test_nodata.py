"""No-data monitor: silence after a multiple of the interval, clearing, quantities, no storms."""

from __future__ import annotations

from alerting.nodata import Expectation, NoDataMonitor

T0 = 1_800_000_000.0


def monitor(devices: dict[str, float], **kw: float) -> NoDataMonitor:
    table = {d: Expectation(interval_s=i) for d, i in devices.items()}
    return NoDataMonitor(lambda: table, now=T0, min_silence_s=0, **kw)


def test_a_silent_device_raises_after_the_multiple_and_clears_when_data_returns() -> None:
    m = monitor({"a": 10.0, "b": 10.0}, multiple=3)
    for t in range(0, 100, 10):
        m.seen("a", ["ph"], T0 + t)
        m.seen("b", ["ph"], T0 + t)
    assert m.check(T0 + 100) == []
    # b stops at T0+90; a keeps reporting
    for t in range(100, 130, 10):  # silent 10, 20, 30 s: not yet more than 3 intervals
        m.seen("a", ["ph"], T0 + t)
        changes = m.check(T0 + t)
        assert changes == [], f"raised too early at +{t}: {changes}"
    changes = m.check(T0 + 121)
    assert [(c.device, c.holds, c.rule) for c in changes] == [("b", True, "nodata")]
    assert changes[0].silent_for_s > 30
    assert m.check(T0 + 130) == [], "raised once, not on every check"
    m.seen("b", ["ph"], T0 + 140)
    assert [(c.device, c.holds) for c in m.check(T0 + 141)] == [("b", False)]


def test_a_device_never_heard_is_silent_one_window_after_start_not_before() -> None:
    m = monitor({"never": 60.0}, multiple=2)
    assert m.check(T0 + 119) == []
    assert [c.device for c in m.check(T0 + 121)] == ["never"]


def test_a_platform_outage_raises_no_storm() -> None:
    devices = {f"d{i}": 10.0 for i in range(100)}
    m = monitor(devices, multiple=3)
    for d in devices:
        m.seen(d, ["co2_ppm"], T0)
    m.pause("mqtt")  # the broker connection drops for ten minutes
    assert m.check(T0 + 600) == []
    m.resume("mqtt", T0 + 600)
    for d in list(devices)[:99]:  # all but one come back after the outage
        m.seen(d, ["co2_ppm"], T0 + 605)
    assert m.check(T0 + 620) == [], "silence counts from the resume, not from before the outage"
    changes = m.check(T0 + 631)
    assert [(c.device, c.holds) for c in changes] == [("d99", True)]


def test_a_quantity_that_stops_is_its_own_alert() -> None:
    m = monitor({"probe": 10.0}, multiple=3, learn_after=3)
    for t in range(0, 60, 10):
        m.seen("probe", ["ph", "turbidity_ntu"], T0 + t)
    for t in range(60, 110, 10):
        m.seen("probe", ["ph"], T0 + t)  # the turbidity sensor died
    changes = m.check(T0 + 100)
    assert [(c.device, c.quantity, c.holds, c.rule) for c in changes] == [
        ("probe", "turbidity_ntu", True, "nodata:turbidity_ntu")
    ]
    m.seen("probe", ["ph", "turbidity_ntu"], T0 + 110)
    assert [(c.quantity, c.holds) for c in m.check(T0 + 111)] == [("turbidity_ntu", False)]


def test_a_device_removed_from_the_registry_is_forgotten() -> None:
    table = {"a": Expectation(10.0)}
    m = NoDataMonitor(lambda: table, now=T0, min_silence_s=0)
    m.seen("a", ["x"], T0)
    assert [c.device for c in m.check(T0 + 31)] == ["a"]
    table.clear()
    assert m.check(T0 + 40) == []
    assert m.silent_devices() == []


def test_a_device_silent_before_an_outage_stays_silent_after_it() -> None:
    m = monitor({"a": 10.0, "b": 10.0}, multiple=3)
    m.seen("a", ["x"], T0)
    m.seen("b", ["x"], T0)
    assert [c.device for c in m.check(T0 + 31)] == ["a", "b"]
    m.seen("b", ["x"], T0 + 35)
    assert [(c.device, c.holds) for c in m.check(T0 + 36)] == [("b", False)]
    m.pause("mqtt")
    m.resume("mqtt", T0 + 100)
    assert m.check(T0 + 101) == [], "no false 'data is back' for a, no new alert for b yet"
    assert m.silent_devices() == ["a"]
