"""The composition root: settings, the platform's services wired together, the local stack and CLI.

This is the only package that imports collectors, alerting, gateway and (for the demo) simulators.
"""
