"""The operator: kopf handlers, the one reconcile, pure builders and loop decisions, the Kubernetes I/O."""
