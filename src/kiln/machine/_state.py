"""The build's state object: everything a later process needs to continue the build.

It is plain data (attrs, converted with cattrs) and never holds a secret: no token, no registry
credentials (``dockerConfigJson`` is read again when ``spec.json`` is written). The driver writes
it to the store after every transition, before the next handler runs, so each field records
something that has *already happened* remotely; a resumed handler reads it to avoid doing that
thing twice.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import PurePath
from typing import Any

import attrs
import cattrs

from kiln.api import BuilderSpec
from kiln.errors import BuildError
from kiln.machine._spec import BUILD_MACHINE, load_machine_spec
from kiln.plan import BuildPlan

SCHEMA_VERSION = 1


# BuildOptions is the one list of the build options; kiln.builds and the CLI derive theirs from
# its fields. A field's metadata: OPTION_KEYWORD, the entry points' keyword for it when that is
# not the field's name; OPTION_CLI, true when the CLI's build commands take it as the flag of
# that keyword (``--disk-mb``) and pass it on as is; OPTION_IN_KEY, true when the option changes
# the image built, so it is one of the build key's inputs (kiln.builds.build_key).
OPTION_KEYWORD = "keyword"
OPTION_CLI = "cli"
OPTION_IN_KEY = "in_key"
_CLI = {OPTION_CLI: True}
_CLI_IN_KEY = {OPTION_CLI: True, OPTION_IN_KEY: True}


@attrs.frozen
class BuildOptions:
    """The caller's build options, minus credentials (those come from the environment on resume)."""

    public: bool = attrs.field(default=False, metadata=_CLI_IN_KEY)
    disk_mb: int | None = attrs.field(default=None, metadata=_CLI_IN_KEY)
    builder_disk_mb: int | None = attrs.field(default=None, metadata=_CLI)
    cpus: float | None = attrs.field(default=None, metadata=_CLI)
    memory_mb: int | None = attrs.field(default=None, metadata=_CLI)
    docker_compat: bool = attrs.field(default=False, metadata=_CLI_IN_KEY)
    # The CLI checks --api-url, or uses the embedded emulator's, before it passes one on.
    api_url: str | None = None
    organization_id: str | None = None
    project_id: str | None = None
    namespace: str | None = None
    deadline_s: float | None = attrs.field(
        default=None, metadata={OPTION_KEYWORD: "deadline", OPTION_CLI: True}
    )
    # Build on Tensorlake's Image Service (states/cas.toml) instead of in a builder sandbox.
    cas: bool = attrs.field(default=False, metadata=_CLI)
    # Docker build args; the Image Service applies them (the CAS path only, as in the official
    # client). The CLI takes them as repeated --build-arg NAME=VALUE.
    build_args: dict[str, str] = attrs.field(factory=dict, hash=False)
    # Return an unchanged earlier build's template instead of building (``--no-cache``: false).
    cache: bool = attrs.field(default=True, metadata=_CLI)


@attrs.frozen
class ErrorRecord:
    """A failure as persisted: enough to explain it after the process that saw it is gone."""

    kind: str
    message: str
    hint: str | None = None
    advice: tuple[str, ...] = ()
    phase: str | None = None  # the state whose handler failed


@attrs.frozen
class PreparedInfo:
    """The typed fields of the prepare response that later phases decide on."""

    snapshot_id: str
    rootfs_node_kind: str
    builder: BuilderSpec
    has_parent: bool
    parent_manifest_uri: str | None
    parent_rootfs_disk_bytes: int | None
    snapshot_uri: str | None
    # Its presence selects the new (signed) path; absent means legacy.
    snapshot_rel_path: str | None


@attrs.frozen
class SandboxRequest:
    """A builder sandbox create request, persisted before it is sent.

    Until the answer's sandbox id is recorded, a sandbox may exist that kiln cannot name: the
    platform shows no way to find a sandbox but by its id. ``name`` was sent in the create body
    (it is what an operator can look for), and ``expires_by`` is when such a sandbox, kept alive
    by nobody, has ended with its idle timeout at the latest.
    """

    name: str
    requested_at: float
    expires_by: float


@attrs.frozen
class CacheKey:
    """The build key (kiln.builds.build_key) and where the build registers its template: the
    API (a loopback one without its port) and the scope. A build with the same ``lookup`` that
    ended done is a cache candidate."""

    key: str
    where: str

    @property
    def lookup(self) -> str:
        """What the store indexes: key and place in one digest."""
        joined = f"{self.key}\n{self.where}".encode()
        return f"sha256:{hashlib.sha256(joined).hexdigest()}"


@attrs.define
class CasProgress:
    """A CAS build's own inputs and progress (states/cas.toml; ``BuildState.build_id`` is the
    Image Service's build id).

    ``request_id`` is the admission's Idempotency-Key, chosen at submission and so persisted
    before the admission is sent: a resumed build sends it again and gets the same build.
    """

    request_id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    # [{"reference", "public_id"}]: the images the Dockerfile takes from the service.
    parents: list[dict[str, str]] = attrs.field(factory=list)
    # The pre-signed upload URL and its cap, as the admission answered them.
    upload_url: str | None = None
    max_bytes: int | None = None
    # The uploaded tar's SHA-256 (hex), once uploaded; sealed once the service took it.
    digest: str | None = None
    sealed: bool = False
    # The last status and phase the service reported.
    status: str | None = None
    phase: str | None = None


@attrs.define
class BuildState:
    """The mutable record of one build; ``state`` names the machine state it is in."""

    plan: BuildPlan
    options: BuildOptions = attrs.field(factory=BuildOptions)
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    schema_version: int = SCHEMA_VERSION
    # A new build starts in the build machine's declared initial state.
    state: str = attrs.field(factory=lambda: load_machine_spec().initial)
    # Handler runs per state; the retry budget in states/build.toml is checked against it. In a
    # state with `progress_resets_attempts`, only the runs since the last one that progressed.
    attempts: dict[str, int] = attrs.field(factory=dict)
    created_at: float = 0.0
    # Wall-clock time the current state was first entered; a retry does not reset it, so a
    # state's deadline bounds all of its attempts together.
    state_entered_at: float = 0.0
    deadline_at: float | None = None
    # The prepare response, after signing has spliced the signed upload into it.
    prepared: dict[str, Any] | None = None
    prepared_info: PreparedInfo | None = None
    build_id: str | None = None
    rootfs_disk_bytes: int | None = None
    # The create request in flight or answered: persisted before the request is sent.
    sandbox_request: SandboxRequest | None = None
    # Earlier create requests whose answer was never recorded (the process died, or the request
    # failed ambiguously): each may have left a sandbox that ends by its ``expires_by``.
    unrecorded_sandboxes: list[SandboxRequest] = attrs.field(factory=list)
    sandbox_id: str | None = None
    sandbox_url: str | None = None
    routing_hint: str | None = None
    # The last status the lifecycle API reported; "running" lets wait_running skip its poll.
    sandbox_status: str | None = None
    sandbox_deleted: bool = False
    # True once the proxy has answered a request: from then on failures get diagnostics.
    proxy_ready: bool = False
    # True once the prepared raw spec holds the signed blocks (new path) or needs none (legacy).
    signed: bool = False
    signed_uri: str | None = None
    # Set only after the remote tar succeeded: a resumed upload skips the context then.
    context_digest: str | None = None
    # The build key, computed before the build runs (None: built by a kiln without the cache).
    cache: CacheKey | None = None
    # Each reference prepare found registered as a template, with that template's id: a cache
    # hit needs every one of them to resolve to the same id still.
    templates: dict[str, str] = attrs.field(factory=dict)
    # Served from the cache: kiln's id of the earlier build whose template this build returns.
    cached_from: str | None = None
    # Learned when a server refused a chunked PUT: later uploads spool and send Content-Length.
    chunked_upload_refused: bool = False
    builder_pid: int | None = None
    # Follow streams replay from the start; this many leading events were already delivered.
    output_events_delivered: int = 0
    # metadata.json as the builder's process printed it (None: read_metadata reads the file).
    builder_metadata: str | None = None
    # A builder log line mentioned ENOSPC / "no space": feeds the disk advice.
    disk_error_seen: bool = False
    # The image a registry refused to the builder ("pull access denied"): feeds the login advice.
    pull_denied_image: str | None = None
    complete_body: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: ErrorRecord | None = None
    cancel_requested: bool = False
    # The final state a `leaves_as_entered` state (cleanup) is heading for, then the one the
    # build ended in.
    outcome: str | None = None
    # The declared machine the build runs (states/<machine>.toml), and a CAS build's progress.
    machine: str = BUILD_MACHINE
    cas: CasProgress | None = None

    def attempts_in(self, state: str) -> int:
        return self.attempts.get(state, 0)

    def need_prepared(self) -> PreparedInfo:
        """The prepared build; phases after ``prepare`` cannot run without it."""
        if self.prepared_info is None or self.prepared is None or self.build_id is None:
            raise BuildError(f"internal: state {self.state!r} reached without a prepared build")
        return self.prepared_info

    def need_sandbox_id(self) -> str:
        if self.sandbox_id is None:
            raise BuildError(f"internal: state {self.state!r} reached without a sandbox id")
        return self.sandbox_id

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _converter.unstructure(self)
        return result

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildState:
        return _converter.structure(data, cls)

    @classmethod
    def from_json(cls, text: str) -> BuildState:
        return cls.from_dict(json.loads(text))


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_unstructure_hook(PurePath, str)
    return converter


_converter = _make_converter()
