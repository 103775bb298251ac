"""What a finished build gives its caller: the registered template, typed.

The platform's complete answer (camelCase JSON, the build's persisted ``result``) carries more
than a user needs and may grow; :class:`Template` keeps the fields a user acts on, and the whole
answer in ``response`` for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from kiln.errors import BuildError

# The complete response's keys (docs/protocol.md#metadata-and-complete); a template lookup says
# templateId.
_ID_KEYS = ("id", "templateId")
_NAME_KEY = "name"
_SNAPSHOT_ID_KEY = "snapshotId"
_SNAPSHOT_SIZE_KEY = "snapshotSizeBytes"
_PUBLIC_KEY = "public"


@attrs.frozen
class Template:
    """A registered sandbox template: start sandboxes from ``id`` (or by ``name``)."""

    id: str
    name: str
    snapshot_id: str | None = None
    # The rootfs snapshot's size as the builder reported it; None when the platform did not say.
    snapshot_size_bytes: int | None = None
    public: bool = False
    # The platform's whole answer, as it came.
    response: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_response(cls, response: Mapping[str, Any], *, name: str) -> Template:
        """The template in a complete response; ``name`` (the planned one) when it has none."""
        template_id = next((response[k] for k in _ID_KEYS if response.get(k)), None)
        if not isinstance(template_id, str):
            raise BuildError(
                "the platform registered the image but its answer names no template id",
                hint="look the image up by name in the Tensorlake console",
            )
        size = response.get(_SNAPSHOT_SIZE_KEY)
        snapshot = response.get(_SNAPSHOT_ID_KEY)
        return cls(
            id=template_id,
            name=str(response.get(_NAME_KEY) or name),
            snapshot_id=snapshot if isinstance(snapshot, str) else None,
            snapshot_size_bytes=size if type(size) is int and size >= 0 else None,
            public=response.get(_PUBLIC_KEY) is True,
            response=dict(response),
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields a user needs, as the JSON output prints them."""
        return {
            "id": self.id,
            "name": self.name,
            "snapshot_id": self.snapshot_id,
            "snapshot_size_bytes": self.snapshot_size_bytes,
            "public": self.public,
        }
