"""Start Debian's InfluxDB and Mosquitto on loopback with project-local data (the embedded default).

The run command and the test fixtures use the same launchers, so what the tests exercise is what a
user runs.
"""
