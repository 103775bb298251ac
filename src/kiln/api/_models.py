"""Typed wire models and the converter that reads them.

Models ignore keys they do not know (the platform adds fields over time) and reject a missing or
mistyped required field with a ResponseError that names its path as sent on the wire. Models
keep the whole JSON object as `raw` where later steps pass it through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from kiln.errors import ResponseError

T = TypeVar("T")

# Exit code reported for an OOM kill that carries neither a signal nor a code: SIGKILL's.
OOM_FALLBACK_CODE = -9
PROCESS_RUNNING = "running"
PROCESS_OOM_KILLED = "oom_killed"


# --- platform API (camelCase on the wire) ---------------------------------------------------


@attrs.frozen
class Template:
    """A registered sandbox template, as the by-name lookup returns it
    (docs/protocol.md#template-lookup)."""

    id: str
    name: str
    snapshot_id: str
    snapshot_format_version: str | None = None
    rootfs_node_kind: str | None = None
    rootfs_disk_bytes: int | None = None
    public: bool = False
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class BuilderSpec:
    """The builder sandbox the platform asks for."""

    image: str
    command: str
    cpus: float
    memory_mb: int
    disk_mb: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.frozen
class ParentSpec:
    """The parent snapshot a diff build stacks on."""

    parent_manifest_uri: str
    rootfs_disk_bytes: int | None = None


@attrs.frozen
class PreparedBuild:
    """The prepare response (docs/protocol.md#prepare-response); `raw` is the opaque spec passed on
    to the builder."""

    build_id: str
    snapshot_id: str
    rootfs_node_kind: Literal["base", "diff"]
    builder: BuilderSpec
    parent: ParentSpec | None = None
    snapshot_uri: str | None = None
    # Its presence selects the new path, where the upload target is signed through the proxy.
    snapshot_rel_path: str | None = None
    rootfs_format: str | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class IntrospectScope:
    organization_id: str
    project_id: str


# --- lifecycle API (snake_case) ---------------------------------------------------------------


@attrs.frozen
class SandboxCreated:
    """The create response (docs/protocol.md#create-sandbox); its `status` is deliberately not
    checked."""

    sandbox_id: str
    status: str
    sandbox_url: str | None = None
    routing_hint: str | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class SandboxInfo:
    """One sandbox as GET returns it (docs/protocol.md#wait-running)."""

    sandbox_id: str
    namespace: str
    status: str
    sandbox_url: str | None = None
    routing_hint: str | None = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


# --- proxy API (snake_case) -------------------------------------------------------------------


@attrs.frozen
class ProcessInfo:
    """A process in the sandbox (docs/protocol.md#process-status). `started_at` must be present but
    may be anything."""

    pid: int
    status: str
    command: str
    started_at: Any
    args: list[str] = attrs.Factory(list)
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False
    ended_at: Any = None
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class OutputEvent:
    """One line of process output; a missing stream means stdout."""

    line: str
    timestamp: Any
    stream: str = "stdout"


@attrs.frozen
class RunStarted:
    pid: int
    started_at: Any


@attrs.frozen
class RunExited:
    exit_code: int | None = None
    signal: int | None = None
    oom_killed: bool = False


@attrs.frozen
class RunResult:
    """The outcome of a one-shot run: its exit and all its output, line by line."""

    pid: int | None
    exit_code: int | None
    signal: int | None
    oom_killed: bool
    stdout: list[str]
    stderr: list[str]


@attrs.frozen
class ExitStatus:
    code: int
    oom: bool


_CAMEL_CASE_MODELS: frozenset[type] = frozenset(
    {Template, BuilderSpec, ParentSpec, PreparedBuild, IntrospectScope}
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def wire_name(cls: type, attribute: str) -> str:
    """The JSON key an attribute is read from."""
    return _camel(attribute) if cls in _CAMEL_CASE_MODELS else attribute


# --- the converter ------------------------------------------------------------------------------


def _strict(kind: type, *, accept: tuple[type, ...] = ()) -> Any:
    # cattrs' default hooks coerce (`str(None)` is "None", `int("7")` is 7); a wire contract
    # should reject a wrong type instead of inventing a value.
    allowed = (kind, *accept)

    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, allowed):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return kind(value)

    return hook


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    converter.register_structure_hook(str, _strict(str))
    converter.register_structure_hook(int, _strict(int))
    converter.register_structure_hook(float, _strict(float, accept=(int,)))
    converter.register_structure_hook(bool, _strict(bool))

    def is_model(cls: Any) -> bool:
        return isinstance(cls, type) and attrs.has(cls)

    def structure_fn_for(cls: type) -> Any:
        overrides: dict[str, Any] = {
            field.name: override(omit=True)
            if field.name == "raw"
            else override(rename=wire_name(cls, field.name))
            for field in attrs.fields(cls)
        }
        from_dict: Any = make_dict_structure_fn(cls, converter, **overrides)

        def hook(value: Any, _type: Any) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return from_dict(value, cls)

        return hook

    converter.register_structure_hook_factory(is_model, structure_fn_for)
    return converter


_converter = _make_converter()


def structure(data: Any, cls: type[T], what: str) -> T:
    """`data` as a `cls`, or a ResponseError naming `what` and every bad field path."""
    if not isinstance(data, dict):
        raise ResponseError(f"{what}: expected a JSON object, got {type(data).__name__}")
    try:
        value = _converter.structure(data, cls)
    except ClassValidationError as exc:
        problems = "; ".join(_describe(path, leaf) for path, leaf in _leaves(exc))
        raise ResponseError(f"{what}: {problems}") from exc
    if any(field.name == "raw" for field in attrs.fields(cls)):  # type: ignore[arg-type]
        value = attrs.evolve(value, raw=data)  # type: ignore[misc]
    return value


def _leaves(exc: BaseException, path: str = "") -> Iterator[tuple[str, BaseException]]:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _leaves(sub, _extend(path, exc, note))
        for sub in without_notes:
            yield from _leaves(sub, path)
    else:
        yield path, exc


def _extend(path: str, exc: BaseException, note: Any) -> str:
    if isinstance(note, IterableValidationNote):
        return f"{path}[{note.index}]"
    assert isinstance(note, AttributeValidationNote)
    owner = exc.cl if isinstance(exc, ClassValidationError) else object
    key = wire_name(owner, note.name)
    return f"{path}.{key}" if path else key


def _describe(path: str, leaf: BaseException) -> str:
    where = path or "<root>"
    if isinstance(leaf, KeyError):
        return f"missing field {where}"
    return f"invalid field {where}: {leaf}"


# --- behaviour on the models -------------------------------------------------------------------


def template_payload(template: Template, reference: str) -> dict[str, Any]:
    """The prepare request's entry for a template hit (docs/protocol.md#template-lookup): kind and
    format play no part."""
    return {
        "templateId": template.id,
        "name": template.name,
        "reference": reference,
        "snapshotId": template.snapshot_id,
        "public": template.public,
    }


def parse_run_event(data: Any) -> RunStarted | OutputEvent | RunExited | None:
    """A `/processes/run` event, tried as Started, Output, Exited in that order
    (docs/protocol.md#one-shot-run).

    An Exited event carrying neither a code nor a signal says nothing and is dropped (None).
    """
    for cls in (RunStarted, OutputEvent):
        try:
            return structure(data, cls, "run event")  # type: ignore[return-value]
        except ResponseError:
            continue
    try:
        exited = structure(data, RunExited, "run event")
    except ResponseError:
        return None
    if exited.exit_code is None and exited.signal is None:
        return None
    return exited


def exit_status(info: ProcessInfo) -> ExitStatus | None:
    """How a process ended (docs/protocol.md#process-status), or None while it runs.

    Kept from the reference, knowingly: a process that is no longer `running` yet reports neither
    an exit code nor a signal counts as exit code 0. The daemon only reports such a state for a
    process it lost track of, and failing the build on it would turn a reporting gap into a build
    failure; the builder's metadata file is what proves success afterwards.
    """
    oom = info.oom_killed or info.status == PROCESS_OOM_KILLED or _managed_oom(info.raw)
    unknown = info.exit_code is None and info.signal is None
    if not oom and unknown and info.status == PROCESS_RUNNING:
        return None
    return ExitStatus(code=_exit_code(info.exit_code, info.signal, oom), oom=oom)


def run_exit_code(result: RunResult) -> int:
    """The exit code of a one-shot run, decided as ``exit_status`` decides it."""
    return _exit_code(result.exit_code, result.signal, result.oom_killed)


def _exit_code(code: int | None, signal: int | None, oom: bool) -> int:
    # An OOM kill is told by its signal first; otherwise the code, then the signal, wins.
    if oom and signal is not None:
        return -signal
    if code is not None:
        return code
    if signal is not None:
        return -signal
    return OOM_FALLBACK_CODE if oom else 0


def _managed_oom(raw: dict[str, Any]) -> bool:
    managed = raw.get("managed")
    last_exit = managed.get("last_exit") if isinstance(managed, dict) else None
    return isinstance(last_exit, dict) and last_exit.get("oom_killed") is True
