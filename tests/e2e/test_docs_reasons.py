"""docs/errors.md names every ErrorReason of the contract."""

from __future__ import annotations

import re

from parley.api.v1 import errors_pb2
from tests.support import REPO

PREFIX = "ERROR_REASON_"


def test_errors_md_names_every_reason() -> None:
    text = (REPO / "docs" / "errors.md").read_text()
    names = [value.name for value in errors_pb2.ErrorReason.DESCRIPTOR.values]
    reasons = [name.removeprefix(PREFIX) for name in names if name != f"{PREFIX}UNSPECIFIED"]
    assert len(reasons) > 40
    missing = [reason for reason in reasons if not re.search(rf"(?<![A-Z_]){reason}(?![A-Z_])", text)]
    assert missing == [], f"docs/errors.md does not name {missing}"
