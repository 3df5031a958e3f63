"""Serving wing: the Roboflow data-capture logger that runs inside DeepSparse Server pods (imports without kopf)."""
