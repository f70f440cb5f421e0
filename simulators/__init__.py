"""Simulated devices that speak the platform's real protocols, for tests, benchmarks and the demo.

A simulated device is a declaration (tenant, site, id, kind, credentials, interval) plus a signal
model that says what its instrument reads at any instant; a transport runner puts it on the wire.

* ``simulators.air_monitor``: indoor-air monitors (GB 37488 quantities), a physical signal model;
* ``simulators.mqtt_device``: thousands of devices over MQTT v5 from one asyncio loop;
* ``simulators.scenario``: scenarios (tenants, sites, devices) as validated YAML data, e.g.
  ``simulators/scenarios/demo.yaml``, which the demo plays and the tests run.

Nothing in the platform imports this package, except tests, benchmarks and the demo.
"""
