"""Kontinual: a Kubernetes operator for the continual-learning loop of vision models."""

__version__ = "0.1.0"
