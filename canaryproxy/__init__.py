"""canaryproxy: release a new model version as a canary, watch what it answers, roll back by itself."""

__version__ = "0.1.0"
