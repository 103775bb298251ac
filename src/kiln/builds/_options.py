"""The build options as the entry points take them, derived from their one declaration,
:class:`kiln.machine.BuildOptions` (the persisted options, whose field metadata says each one's
keyword and whether the CLI passes it on)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import attrs

from kiln.api import check_api_url
from kiln.errors import UsageError
from kiln.machine import (
    BUILD_MACHINE,
    CAS_MACHINE,
    OPTION_CLI,
    OPTION_IN_KEY,
    OPTION_KEYWORD,
    BuildOptions,
    BuildState,
    CasProgress,
)
from kiln.plan import BuildPlan


class SubmitKwargs(TypedDict, total=False):
    """The build options a build persists, so a submitted one carries them to its worker (no
    credentials, no callbacks): BuildOptions' fields by keyword (a test checks they agree)."""

    public: bool
    disk_mb: int | None
    builder_disk_mb: int | None
    cpus: float | None
    memory_mb: int | None
    docker_compat: bool
    api_url: str | None
    organization_id: str | None
    project_id: str | None
    namespace: str | None
    # Seconds for the whole build; cleanup still runs after it passes.
    deadline: float | None
    # The Image Service path (states/cas.toml), and its Docker build args.
    cas: bool
    build_args: dict[str, str]
    # Return an unchanged earlier build's template from the store instead of building.
    cache: bool


def option_keywords(*, cli: bool = False, in_key: bool = False) -> dict[str, str]:
    """Each build option's keyword, mapped to its BuildOptions field; ``cli``: only those the
    CLI's build commands take as flags of those names and pass on as they are; ``in_key``: only
    those that change the image built (inputs of the build key)."""
    return {
        field.metadata.get(OPTION_KEYWORD, field.name): field.name
        for field in attrs.fields(BuildOptions)
        if (field.metadata.get(OPTION_CLI, False) or not cli)
        and (field.metadata.get(OPTION_IN_KEY, False) or not in_key)
    }


def build_options(options: Mapping[str, Any]) -> BuildOptions:
    """The options persisted with a build, taken from the entry points' keyword arguments
    (others, such as credentials, are ignored); an option not given keeps its default."""
    api_url = options.get("api_url")
    if api_url is not None:
        # Checked before the options are persisted with the build: a URL with credentials in
        # it must never reach the store.
        check_api_url(api_url)
    given = {field: options[kw] for kw, field in option_keywords().items() if kw in options}
    built = BuildOptions(**given)
    if built.build_args and not built.cas:
        # As the official client: the builder sandbox path has no way to apply them.
        raise UsageError(
            "build args are applied by the Image Service only",
            hint="add cas=True, or apply them locally when planning: "
            "kiln.plan.plan_dockerfile(..., build_args=...)",
        )
    return built


def new_state(plan: BuildPlan, options: BuildOptions) -> BuildState:
    """A new build of ``plan``: on the Image Service's machine when ``options.cas`` says so,
    with the admission's Idempotency-Key chosen now, so that it is persisted before it is sent."""
    if options.cas:
        return BuildState(plan=plan, options=options, machine=CAS_MACHINE, cas=CasProgress())
    return BuildState(plan=plan, options=options, machine=BUILD_MACHINE)
