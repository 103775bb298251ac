"""Where things live in the builder sandbox, how long it lives, and how the builder is invoked."""

from __future__ import annotations

import shlex

from kiln.errors import ResponseError

# What the builder reads and writes lives under one root-owned prefix that the rootfs builder
# image reserves for us. Only root steps (the builder's one process) write there, so no step has
# to make it writable first.
REMOTE_BUILD_DIR = "/var/lib/tensorlake/rootfs-builder/build"
# The builder reads the Dockerfile's context from here; the spec names it in `contextDir`.
REMOTE_CONTEXT_DIR = f"{REMOTE_BUILD_DIR}/context"
# The file API writes with the sandbox user's fsuid, so uploads go where that user may create
# files without a root step first: /tmp, which every Linux root filesystem has, world-writable
# with the sticky bit (FHS 3.0 section 3.18). This saves the root mkdir and chmod before the uploads.
REMOTE_UPLOAD_DIR = "/tmp"
# The context travels as one tar.gz and is extracted remotely: one upload instead of one per file.
REMOTE_ARCHIVE_PATH = f"{REMOTE_UPLOAD_DIR}/kiln-context.tar.gz"
# The builder's only inputs and outputs are these two files, passed on its command line.
REMOTE_SPEC_PATH = f"{REMOTE_UPLOAD_DIR}/kiln-spec.json"
REMOTE_METADATA_PATH = f"{REMOTE_BUILD_DIR}/metadata.json"

# The platform names the builder by its bare tool name; the daemon does not search PATH for the
# executable, so the bare name is rewritten to where the builder image installs it.
BUILDER_COMMAND_NAME = "tl-rootfs-build"
BUILDER_INSTALL_DIR = "/usr/local/bin"
# The builder shells out to docker, mount, mkfs and friends; the daemon's default environment has
# no PATH that reaches all of them.
BUILDER_PATH_ENV = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The builder needs root (docker build, loop devices, /var/lib/docker); the one process that
# extracts the context and runs it is started as root for that reason.
ROOT_USER = "root"

# Lifetime asked for the builder sandbox. Set explicitly so that kiln does not depend on whatever
# default the platform hands out; long silent steps are covered by the keepalive below.
SANDBOX_TIMEOUT_SECS = 300
# How often to ping the sandbox while the builder runs, so a long step that produces no traffic
# does not let it expire. Must stay below SANDBOX_TIMEOUT_SECS.
KEEPALIVE_INTERVAL_S = 120
# Diagnostics run after a failure, on a sandbox that may be wedged; they must not hang the cleanup.
DIAGNOSTIC_TIMEOUT_S = 5

# The builder's own flags that tell it where its inputs and outputs are.
_SPEC_FLAG = "--spec"
_METADATA_FLAG = "--metadata-out"


def builder_argv(command: str) -> list[str]:
    """The builder's argv from the platform's `builder.command`: executable first, then its args.

    The command is split shell-style; the spec and metadata paths are appended.
    """
    try:
        parts = shlex.split(command)
    except ValueError as exc:
        raise ResponseError(
            f"invalid rootfs builder command returned by platform API: {command} ({exc})",
            hint="the platform's prepare response is malformed; report it to Tensorlake",
        ) from None
    if not parts:
        raise ResponseError(
            "empty rootfs builder command returned by platform API",
            hint="the platform's prepare response is malformed; report it to Tensorlake",
        )
    executable, *args = parts
    return [
        builder_executable(executable),
        *args,
        _SPEC_FLAG,
        REMOTE_SPEC_PATH,
        _METADATA_FLAG,
        REMOTE_METADATA_PATH,
    ]


def builder_executable(executable: str) -> str:
    """The installed path for the bare builder name; any other executable is kept as given."""
    if executable == BUILDER_COMMAND_NAME:
        return f"{BUILDER_INSTALL_DIR}/{BUILDER_COMMAND_NAME}"
    return executable


def builder_env() -> dict[str, str]:
    """The environment the builder runs with."""
    return {"PATH": BUILDER_PATH_ENV}
