"""``llorch trace review ID``: record that a requirement's test links were checked against its
current text, by storing the requirement's fingerprint per link in ``requirements/reviews.yaml``
(D8). When the text later changes, the fingerprint differs and the link shows as suspect."""

from __future__ import annotations

from pathlib import Path

import yaml
from llorch.tools.spec import RETIRED, load_maps
from llorch.tools.trace.inputs import TraceInputError, load_reviews

HEADER = """\
# Review state of links (D8), written by `llorch trace review ID [--test NODEID]`: for each
# requirement, each linked test's node id -> the requirement fingerprint when the link was last
# reviewed. A link with no entry is unreviewed (shown, not failing); one whose fingerprint differs
# from the requirement's current fingerprint is suspect.
"""


class ReviewError(Exception):
    """The requirement or test named for review does not exist or is not linked."""


def review(root: Path, req_id: str, tests: list[str] | None = None) -> list[tuple[str, str]]:
    """Mark ``tests`` (default: every linked test) of ``req_id`` reviewed; returns what was recorded."""
    maps_dir = root / "requirements"
    req = next((r for r in load_maps(maps_dir) if r["id"] == req_id), None)
    if req is None:
        raise ReviewError(f"{req_id} is not in requirements/; run `llorch spec extract` first")
    if req["status"] == RETIRED:
        raise ReviewError(f"{req_id} is retired; nothing may link to it")
    linked = list(req["links"]["tests"])
    chosen = tests or linked
    missing = [t for t in chosen if t not in linked]
    if missing:
        raise ReviewError(f"not linked to {req_id}: {', '.join(missing)} "
                          f"(linked: {', '.join(linked) or 'none'})")
    if not chosen:
        raise ReviewError(f"{req_id} has no linked tests to review")
    try:
        reviews = load_reviews(maps_dir)
    except TraceInputError as exc:
        raise ReviewError(str(exc)) from exc
    entry = reviews.setdefault(req_id, {})
    for nodeid in chosen:
        entry[nodeid] = req["fingerprint"]
    data = {"reviews": {rid: dict(sorted(links.items())) for rid, links in sorted(reviews.items())}}
    (maps_dir / "reviews.yaml").write_text(
        HEADER + yaml.safe_dump(data, sort_keys=False, width=1_000_000), encoding="utf-8")
    return [(n, req["fingerprint"]) for n in chosen]
