"""Helm chart, images and local-cluster tests (tier: chart)."""
