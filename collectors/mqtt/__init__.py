"""MQTT telemetry collector: see README.md beside this file."""

from collectors.mqtt.collector import MqttCollector

__all__ = ["MqttCollector"]
