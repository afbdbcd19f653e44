"""JSON for record values, keeping apart what JSON would merge (bytes/str, bool/int, float)."""

from __future__ import annotations

from typing import Any


def plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v
