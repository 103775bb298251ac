"""imageservice: publishes sandbox images for its callers, with kiln doing the building.

It is what a service that embeds kiln looks like: it calls the library, keeps builds in a store
so that a restart loses none, and turns kiln's errors into answers for its own callers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import kiln
from kiln.store import Store


@dataclass(frozen=True)
class Publication:
    """What a caller gets back: the registered template, or why there is none."""

    dockerfile: str
    template_id: str | None = None
    error: str | None = None


class ImageService:
    def __init__(self, *, api_url: str, api_key: str, store: Store | None = None) -> None:
        self._api_url = api_url
        self._api_key = api_key
        self._store = store

    async def publish(self, dockerfile: str | os.PathLike[str]) -> Publication:
        """Build and register the image; a failed build is an answer, not an exception."""
        try:
            template = await kiln.build_image(
                dockerfile, api_url=self._api_url, api_key=self._api_key, store=self._store
            )
        except kiln.KilnError as error:
            return Publication(str(dockerfile), error=str(error))
        return Publication(str(dockerfile), template_id=template.id)
