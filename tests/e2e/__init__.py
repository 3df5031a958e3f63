"""End-to-end tier: the operator against a real Kubernetes control plane (see conftest.py)."""
