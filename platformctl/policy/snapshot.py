"""What `docker compose -f F images --format json SERVICE` says the service runs.

Compose prints a JSON array of objects with `ContainerName`, `Repository`,
`Tag` and `ID` (the full `sha256:` image ID), and `null` (v2.40, seen on a
real engine) or `[]` when the service runs no container. A service pinned by
image ID lists `Repository` "sha256" and the hex as `Tag`. Every byte comes
from the host: an ID that is not `sha256:` and 64 hex makes the whole
listing unreadable (a rollback must never pin a guess),
and a name that does not look like docker's own is kept as "" rather than
verbatim. IDs are never passed through the redactor: they are not secrets.
"""

from __future__ import annotations

import json
import re
from typing import Any

from platformctl.models import IMAGE_ID_PATTERN, ContainerImage, ImageSnapshot

_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_CONTAINER = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
_REPOSITORY = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}|<none>")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|<none>")
MAX_CONTAINERS = 100


class UnreadableImages(ValueError):
    pass


def _name(value: Any, pattern: re.Pattern[str]) -> str:
    return value if isinstance(value, str) and pattern.fullmatch(value) else ""


def _rows(stdout: str) -> list[Any]:
    text = stdout.strip()
    if not text:
        return []
    try:
        # An array (as v2.40 prints it), or one object per line, as `ps` prints since v2.21.
        whole = text.startswith("[") or text == "null"
        rows = json.loads(text) if whole else [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as e:  # nesting past the parser's recursion limit
        raise UnreadableImages(f"compose images printed something that is not JSON: {str(e)[:200]}") from None
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise UnreadableImages("compose images JSON is not a list")
    return rows


def parse_images(stdout: str) -> ImageSnapshot:
    rows = _rows(stdout)
    if len(rows) > MAX_CONTAINERS:
        raise UnreadableImages(f"compose images listed {len(rows)} containers (at most {MAX_CONTAINERS})")
    images = []
    for row in rows:
        if not isinstance(row, dict):
            raise UnreadableImages("compose images JSON is not a list of objects")
        image_id = row.get("ID")
        if not isinstance(image_id, str) or not _IMAGE_ID.fullmatch(image_id):
            raise UnreadableImages("compose images printed an image ID that is not sha256: and 64 hex digits")
        images.append(
            ContainerImage(
                container=_name(row.get("ContainerName"), _CONTAINER),
                repository=_name(row.get("Repository"), _REPOSITORY),
                tag=_name(row.get("Tag"), _TAG),
                image_id=image_id,
            )
        )
    return ImageSnapshot(images=images)


def rollback_image(snapshot: ImageSnapshot) -> str:
    """The one image ID to pin the service back to; ValueError when there is none to choose."""
    ids = snapshot.image_ids()
    if not ids:
        raise ValueError("the service ran no container before this apply: there is no image to go back to")
    if len(ids) > 1:
        raise ValueError(f"the service's containers ran {len(ids)} different images before this apply")
    return ids[0]
