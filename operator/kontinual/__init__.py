"""Kontinual: a Kubernetes operator for the continual-learning loop of vision models."""

__version__ = "0.1.0"

# API identity of the custom resource, shared by the operator, the CLI and the tests.
GROUP = "kontinual.io"
VERSION = "v1alpha1"
KIND = "ContinualModel"
PLURAL = "continualmodels"
