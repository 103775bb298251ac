"""The build cache: an unchanged build returns the template an earlier one registered.

The **build key** is a digest of what decides the image and is known before anything is sent:
the registered name, the Dockerfile as sent (after ``--build-arg`` and ``--target``), the image
imported, the context's digest, and the options that change the result (those BuildOptions marks
``OPTION_IN_KEY``: disk size, Docker compatibility, public). The store indexes each build by its
key together with where its template is registered (the API URL and scope), so a new build finds
the newest earlier one that ended done with the same key in the same place.

Two more inputs are only known remotely, so they are checked rather than hashed: the templates the
Dockerfile builds on (each reference prepare found registered, by id, must resolve to the same id
still) and the earlier build's own template (its name must still resolve to its id: deleted, or
re-pointed by another build of that name, it is no hit). That is one request for a build on
registry images (``examples/hello``), one more per template it builds on. Whatever the check finds
wrong, or cannot find out, the build simply runs.

A CAS build (``cas=True``, states/cas.toml) is cached the same way, under a key that says so (a
legacy template never answers a CAS build, nor the reverse); its check asks the Image Service
(``GET /images/v4/images/name/{name}``) for its own image and each parent it took by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

import attrs

from kiln.api import ApiSettings, ImageServiceClient, PlatformClient, is_loopback
from kiln.builds._options import option_keywords
from kiln.durable import load_state
from kiln.errors import KilnError
from kiln.machine import CAS_MACHINE, BuildOptions, BuildState, CacheKey, Services, Trigger
from kiln.plan import BuildPlan, summarize_context
from kiln.store import Store

# Bumped when the key's inputs or their encoding change, so old keys stop matching.
KEY_VERSION = 1
KEY_PREFIX = "sha256:"


def build_key(plan: BuildPlan, options: BuildOptions, context_digest: str | None) -> str:
    """The build key of ``plan`` built with ``options`` from a context with this digest."""
    inputs: dict[str, Any] = {
        "version": KEY_VERSION,
        "name": plan.name,
        "dockerfile": plan.dockerfile_text,
        "import": plan.import_image_reference,
        "context": context_digest,
        "options": {
            field: getattr(options, field) for field in option_keywords(in_key=True).values()
        },
    }
    if options.cas:
        # An Image Service image is not a legacy template: neither answers the other's build.
        # (Absent for legacy builds, whose keys stay as they were.)
        inputs["cas"] = True
    encoded = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return KEY_PREFIX + hashlib.sha256(encoded).hexdigest()


def context_digest(plan: BuildPlan) -> str | None:
    """The digest of the context the build would send (None: an import sends none). It walks and
    reads the whole context, as the upload will."""
    if plan.is_import or plan.context_dir is None:
        return None
    # What cannot be archived is skipped with a warning by the upload itself; not said twice.
    summary = summarize_context(
        plan.context_dir, dockerfile=plan.dockerfile_path, on_warning=lambda _text: None
    )
    return summary.digest


def where(settings: ApiSettings) -> str:
    """Where templates are registered: the API URL and the PAT scope. A loopback URL loses its
    port: an emulator's port changes from run to run while its data dir, and the templates in
    it, stay (the template-id check tells two emulators apart)."""
    url = settings.api_url
    parts = urlsplit(url)
    if is_loopback(url):
        url = f"{parts.scheme}://{parts.hostname}{parts.path}"
    credentials = settings.credentials
    return f"{url} {credentials.organization_id or '-'} {credentials.project_id or '-'}"


@attrs.frozen
class Hit:
    """An earlier build whose template the new one returns."""

    build_id: str
    template: dict[str, Any]
    # What it was built on, which the build served from it carries on for the next check.
    templates: dict[str, str]


async def look_up(state: BuildState, services: Services, store: Store) -> Hit | None:
    """Give a build that has not started its build key, then look for a hit (unless its options
    say ``cache=False``). None on a miss, and whenever the key cannot be known or the check
    fails: the build then runs, and reports any such problem as it always does."""
    if state.state != services.spec.initial:
        return None
    try:
        digest = await asyncio.to_thread(context_digest, state.plan)
        settings = services.settings(state)
    except KilnError:
        return None
    state.cache = CacheKey(build_key(state.plan, state.options, digest), where(settings))
    if not state.options.cache:
        return None
    done = services.spec.final_of(Trigger.SUCCEED)
    try:
        record = await store.find_cached(state.cache.lookup, state=done)
        if record is None:
            return None
        earlier = load_state(record)
        if earlier.result is None:
            return None
        if earlier.machine == CAS_MACHINE:
            if not await _still_published(earlier, services.images(state)):
                return None
        elif not await _still_registered(earlier, services.platform(state)):
            return None
    except KilnError:
        return None
    return Hit(earlier.cached_from or record.id, earlier.result, earlier.templates)


async def _still_published(earlier: BuildState, images: ImageServiceClient) -> bool:
    """A CAS build's: whether its image, and each parent it took by name, is still what that
    name resolves to on the Image Service (one lookup each, its own first); a parent pinned by
    image id is looked up by nothing, as the build itself did not look it up."""
    assert earlier.result is not None
    wanted = {earlier.plan.name: str(earlier.result.get("id"))}
    if earlier.cas is not None:
        for parent in earlier.cas.parents:
            if parent["reference"] != parent["public_id"]:
                wanted[parent["reference"]] = parent["public_id"]
    for name, image_id in wanted.items():
        image = await images.image_by_name(name)
        if image is None or image.id != image_id:
            return False
    return True


async def _still_registered(earlier: BuildState, platform: PlatformClient) -> bool:
    """Whether the earlier build's template, and each template it was built on, is still what
    its name resolves to (one lookup each, its own first)."""
    assert earlier.result is not None
    wanted = {earlier.plan.name: str(earlier.result.get("id")), **earlier.templates}
    for name, template_id in wanted.items():
        template = await platform.get_template(name)
        if template is None or template.id != template_id:
            return False
    return True
