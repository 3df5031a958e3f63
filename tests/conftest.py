"""Test-suite wide setup: offline, no analytics, writable config dirs, repo root importable."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
_cfg = os.environ.get("YOLO_CONFIG_DIR") or tempfile.mkdtemp(prefix="kontinual-yolo-")
os.environ.setdefault("YOLO_CONFIG_DIR", _cfg)
os.environ.setdefault("YOLOV5_CONFIG_DIR", _cfg)
