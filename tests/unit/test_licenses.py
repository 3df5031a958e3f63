"""hack/licenses.py reads licence metadata the way a legal review would: copyleft, proprietary and unknown fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kontinual_licenses", ROOT / "hack" / "licenses.py")
assert _spec is not None and _spec.loader is not None
licenses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(licenses)


@pytest.mark.parametrize(("expression", "field", "classifiers", "allowed"), [
    ("Apache-2.0", None, [], True),
    ("MPL-2.0 AND (Apache-2.0 OR MIT)", None, [], True),  # orjson
    ("Apache-2.0 OR BSD-3-Clause", None, [], True),
    ("GPL-3.0-only OR LicenseRef-Commercial", None, [], False),
    ("Apache-2.0 AND GPL-2.0-only", None, [], False),
    ("LicenseRef-NVIDIA-Proprietary", None, [], False),
    (None, "Apache 2.0", [], True),
    (None, "GPL", ["License :: OSI Approved :: GNU General Public License (GPL)"], False),  # yolov5
    (None, "AGPL-3.0", [], False),  # ultralytics
    (None, "Neural Magic DeepSparse Community License", ["License :: Other/Proprietary License"], False),
    (None, "Copyright (c) 2005-2023, NumPy Developers.", ["License :: OSI Approved :: BSD License"], True),
    (None, "Dual License", ["License :: OSI Approved :: BSD License",
                            "License :: OSI Approved :: Apache Software License"], True),  # python-dateutil
    (None, "Dual License", ["License :: OSI Approved :: BSD License",
                            "License :: OSI Approved :: GNU General Public License (GPL)"], False),
    (None, "MIT style", [], False),  # prose nobody can check
    (None, None, [], False),
    (None, "UNKNOWN", [], False),
])
def test_verdict(expression: str | None, field: str | None, classifiers: list[str], allowed: bool) -> None:
    assert licenses.verdict(expression, field, classifiers)[1] is allowed
