"""prepare: template lookups, CAS rejection (docs/protocol.md#template-lookup), then POST
prepare."""

from __future__ import annotations

from typing import Any

from kiln.machine._outcome import SUCCEEDED, Outcome
from kiln.machine._services import Services
from kiln.machine._state import BuildState, PreparedInfo
from kiln.machine.protocol import prepare_body, reject_cas_templates, template_payload
from kiln.plan import BuildPlan

# A parent reference carrying one of these cannot name a registered template: `$` is an
# unexpanded build argument and `@` pins a registry digest.
_UNRESOLVABLE_MARKERS = ("$", "@")
_DIFF_KIND = "diff"
# Docker's empty base: never an image, so never a template to look up (the reference looks it up).
_SCRATCH = "scratch"


async def prepare(state: BuildState, services: Services) -> Outcome:
    """Re-entry: looks the templates up and POSTs prepare again; an unused earlier build is dropped."""
    plan = state.plan
    services.status(state, "Preparing rootfs build...")
    platform = services.platform(state)
    parent: tuple[str, dict[str, Any]] | None = None
    # What the references resolved to: a cache hit needs each to resolve to the same id still.
    state.templates = {}
    if parent_is_eligible(plan):
        template = await platform.get_template(plan.base_image)
        parent = (plan.base_image, template.raw) if template is not None else None
        if template is not None:
            state.templates[plan.base_image] = template.id
    additional: list[tuple[str, dict[str, Any]]] = []
    for reference in plan.additional_image_references:
        template = await platform.get_template(reference)
        if template is not None:
            additional.append((reference, template.raw))
            state.templates[reference] = template.id
    reject_cas_templates(parent, additional)
    body = prepare_body(
        name=plan.name,
        dockerfile=plan.dockerfile_text,
        base_image=plan.base_image,
        public=state.options.public,
        parent=template_payload(*parent) if parent else None,
        additional=[template_payload(ref, raw) for ref, raw in additional],
    )
    prepared = await platform.prepare(body)
    state.prepared = prepared.raw
    state.build_id = prepared.build_id
    state.prepared_info = PreparedInfo(
        snapshot_id=prepared.snapshot_id,
        rootfs_node_kind=prepared.rootfs_node_kind,
        builder=prepared.builder,
        has_parent=prepared.parent is not None,
        parent_manifest_uri=prepared.parent.parent_manifest_uri if prepared.parent else None,
        parent_rootfs_disk_bytes=prepared.parent.rootfs_disk_bytes if prepared.parent else None,
        snapshot_uri=prepared.snapshot_uri,
        snapshot_rel_path=prepared.snapshot_rel_path,
    )
    mode = "RootfsDiff" if prepared.rootfs_node_kind == _DIFF_KIND else "RootfsBase"
    services.status(state, f"Build mode: {mode}")
    return SUCCEEDED


def parent_is_eligible(plan: BuildPlan) -> bool:
    """Whether the final FROM may name a registered template (docs/protocol.md#template-lookup)."""
    if plan.is_import or plan.base_image_is_internal_stage:
        return False
    if plan.base_image.lower() == _SCRATCH:
        return False
    return not any(marker in plan.base_image for marker in _UNRESOLVABLE_MARKERS)
