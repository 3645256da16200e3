"""The RouterOS-like CoA/Disconnect responder, now in the lab (cli/lab.py); re-exported for the tests."""

from cli.lab import BEHAVIOURS, NasSimulator

__all__ = ["BEHAVIOURS", "NasSimulator"]
