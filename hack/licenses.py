"""Licence check of a venv: every installed distribution must carry an OSI licence fit for production use.

Run with the venv's interpreter (`.venv-runtime/bin/python hack/licenses.py`): it reads each
installed distribution's metadata (License-Expression, else the License field, else the
`License ::` classifiers), prints one line per distribution and exits 1 if any is not on the
allow-list or cannot be classified. The allow-list is the permissive licences plus MPL-2.0
(file-level copyleft: using unmodified files in a product imposes nothing on the product);
GPL/AGPL/LGPL, "Other/Proprietary" (DeepSparse's community licence) and anything unknown fail.
Stdlib only, so it runs in any venv.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from typing import Iterable

ALLOWED = frozenset({
    "Apache-2.0", "MIT", "MIT-0", "MIT-CMU", "BSD-2-Clause", "BSD-3-Clause", "ISC", "PSF-2.0", "MPL-2.0",
    "LLVM-exception", "BSL-1.0", "Zlib", "Unlicense", "0BSD",
})
# SPDX ids (and LicenseRef-s) that are read as such and refused: copyleft, source-available, proprietary.
DENIED = r"(A|L)?GPL-|GPL$|AGPL|SSPL|BUSL|Elastic|CC-BY-NC|LicenseRef-|Proprietary$"
# What the License field says where a project wrote prose instead of an SPDX id.
ALIASES = {
    "apache 2.0": "Apache-2.0", "apache 2": "Apache-2.0", "apache": "Apache-2.0", "apache license 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0", "apache license v2.0": "Apache-2.0", "the mit license": "MIT",
    "3-clause bsd": "BSD-3-Clause", "https://www.apache.org/licenses/license-2.0": "Apache-2.0",
    "osi approved :: apache software license": "Apache-2.0", "mit license": "MIT", "mit": "MIT",
    "bsd 3-clause license": "BSD-3-Clause", "3-clause bsd license": "BSD-3-Clause", "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause", "isc license (iscl)": "ISC", "isc license": "ISC",
    "python software foundation license": "PSF-2.0", "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "gnu general public license (gpl)": "GPL", "gpl": "GPL", "agpl-3.0": "AGPL-3.0",
    "gnu affero general public license v3 or later (agplv3+)": "AGPL-3.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0", "other/proprietary license": "Proprietary",
}


def _ids(text: str) -> list[str]:
    """SPDX ids of one licence string: an expression (`A AND (B OR C)`), an SPDX id, or a known prose name."""
    text = text.strip()
    alias = ALIASES.get(text.lower().rstrip("/"))
    if alias:
        return [alias]
    tokens = [t for t in re.split(r"[\s()]+", text) if t and t not in {"AND", "OR", "WITH"}]
    return tokens if tokens and all(t in ALLOWED or re.match(DENIED, t) for t in tokens) else []


def _fits(expression: str, ids: list[str]) -> bool:
    """An `OR` choice fits if one side is allowed; everything else (AND, WITH, a single id) needs every id."""
    if " OR " in expression and " AND " not in expression and "(" not in expression:
        return any(i in ALLOWED for i in ids)
    if "(" in expression:  # `A AND (B OR C)`: each parenthesised choice needs one allowed member
        outside = re.sub(r"\([^)]*\)", " ", expression)
        groups = re.findall(r"\(([^)]*)\)", expression)
        return all(i in ALLOWED for i in _ids(outside)) and all(any(i in ALLOWED for i in _ids(g)) for g in groups)
    return all(i in ALLOWED for i in ids)


def verdict(expression: str | None, license_field: str | None, classifiers: Iterable[str]) -> tuple[str, bool]:
    """(the licence as read, allowed?) for one distribution's metadata."""
    if expression and _ids(expression):
        return expression, _fits(expression, _ids(expression))
    first = (license_field or "").strip().splitlines()[0] if (license_field or "").strip() else ""
    ids = _ids(first) if first and len(first) < 80 else []
    if ids:
        return first, all(i in ALLOWED for i in ids)
    # Prose or nothing in License: the classifiers. Several may mean a choice or a combination
    # ("Dual License"): conservatively, every one of them must be allowed.
    named = [c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::")]
    mapped = [ALIASES.get(n.lower(), "") for n in named]
    if mapped and all(mapped):
        return " + ".join(mapped), all(m in ALLOWED for m in mapped)
    return first or "(none declared)", False


def main() -> int:
    failures = 0
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        meta = dist.metadata
        read, allowed = verdict(meta.get("License-Expression"), meta.get("License"), meta.get_all("Classifier") or [])
        failures += not allowed
        print(f"{'ok  ' if allowed else 'FAIL'} {meta['Name']}=={dist.version}: {read}")
    print(f"{failures} distribution(s) without a licence fit for production use" if failures else
          "every distribution has an OSI licence fit for production use")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
