"""kiln.api: the HTTP clients for Tensorlake's build API.

One ``httpx.AsyncClient`` (from :func:`create_http_client`) is shared by the three clients of a
build: :class:`PlatformClient` (templates and template builds), :class:`LifecycleClient` (builder
sandboxes) and :class:`ProxyClient` (processes, files and signing inside one sandbox).
:class:`ImageServiceClient` speaks the Image Service (``/images/v4``, the CAS path). Pass a
``transport`` to swap the network for ``httpx.MockTransport`` or an in-process ASGI app.

Failures are ``kiln.errors.ApiError`` subclasses; :func:`is_transient` says whether a retry may help.
"""

from kiln.api._http import create_http_client, is_transient
from kiln.api._images import (
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_RUNNING,
    STATUS_SUCCEEDED,
    TERMINAL_STATUSES,
    CancelOutcome,
    CasBuild,
    CasImage,
    ContextUpload,
    ImageServiceClient,
)
from kiln.api._lifecycle import LifecycleClient
from kiln.api._models import (
    BuilderSpec,
    ExitStatus,
    OutputEvent,
    ParentSpec,
    PreparedBuild,
    ProcessInfo,
    RunResult,
    SandboxCreated,
    SandboxInfo,
    Template,
    exit_status,
    run_exit_code,
    template_payload,
)
from kiln.api._platform import PlatformClient
from kiln.api._proxy import (
    ProxyClient,
    process_payload,
    with_silences,
)
from kiln.api._settings import ApiSettings, AuthMode, Credentials, check_api_url, is_loopback
from kiln.errors import ChunkedUploadRefused

__all__ = [
    "STATUS_CANCELLED",
    "STATUS_FAILED",
    "STATUS_RUNNING",
    "STATUS_SUCCEEDED",
    "TERMINAL_STATUSES",
    "ApiSettings",
    "AuthMode",
    "BuilderSpec",
    "CancelOutcome",
    "CasBuild",
    "CasImage",
    "ChunkedUploadRefused",
    "ContextUpload",
    "Credentials",
    "ExitStatus",
    "ImageServiceClient",
    "LifecycleClient",
    "OutputEvent",
    "ParentSpec",
    "PlatformClient",
    "PreparedBuild",
    "ProcessInfo",
    "ProxyClient",
    "RunResult",
    "SandboxCreated",
    "SandboxInfo",
    "Template",
    "check_api_url",
    "create_http_client",
    "exit_status",
    "is_loopback",
    "is_transient",
    "process_payload",
    "run_exit_code",
    "template_payload",
    "with_silences",
]
