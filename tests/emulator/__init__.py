"""Reconcile tests against an emulated Kubernetes API server (kmock 0.8 plus the API rules kopf needs)."""
