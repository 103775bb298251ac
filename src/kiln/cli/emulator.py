"""`kiln emulator`: run the local Tensorlake-compatible server until Ctrl-C."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.emulator import (
    DEFAULT_HOST,
    PROFILES,
    SIGN_MODES,
    SSE_FRAMINGS,
    BuilderBehaviour,
    EmulatorConfig,
    is_loopback,
)
from kiln.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from kiln.emulator import Emulator

# Any token works unless --api-key is given; this one is only printed as an example.
EXAMPLE_TOKEN = "any-token"
# What a realism part defaults to: whatever the profile chosen sets it to.
PER = " (default: as --profile sets it)"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `kiln emulator` to `sub`."""
    parser = sub.add_parser(
        "emulator",
        help="run a local Tensorlake-compatible build server",
        description="Serve Tensorlake's platform, sandbox lifecycle and sandbox proxy APIs on one "
        "loopback port, with virtual sandboxes and a builder stand-in, until Ctrl-C. Point "
        "kiln (or the official client) at it with TENSORLAKE_API_URL and any token.",
    )
    parser.add_argument("--host", metavar="HOST", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument(
        "--port", metavar="PORT", type=int, default=0, help="port (default: a free one)"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help="keep templates and blobs here (default: a temp dir)",
    )
    parser.add_argument(
        "--api-key", metavar="TOKEN", help="accept only this bearer token (default: any)"
    )
    parser.add_argument(
        "--sign-mode",
        choices=SIGN_MODES,
        default="legacy",
        help="prepare answers the legacy upload block, or the new snapshotRelPath",
    )
    _add_profile_arguments(parser)
    parser.add_argument(
        "--latency-ms", metavar="MS", type=int, default=0, help="added to every response"
    )
    parser.add_argument(
        "--bandwidth-mbps",
        metavar="MBPS",
        type=float,
        help="pace request and response bodies (default: unpaced)",
    )
    parser.add_argument(
        "--builder-duration-ms",
        metavar="MS",
        type=int,
        default=0,
        help="how long the builder stand-in works",
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="permit a non-loopback --host (no real auth!)"
    )
    parser.set_defaults(func=run)


def _add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """The realism parts: each defaults to what --profile says, and each can be set alone."""
    group = parser.add_argument_group(
        "realism", "--profile cloud turns every part on with realistic timings; each flag overrides"
    )
    group.add_argument(
        "--profile", choices=PROFILES, default="ideal", help="how the platform behaves"
    )
    flag = argparse.BooleanOptionalAction
    group.add_argument(
        "--start-delay-ms", metavar="MS", type=int, help="sandboxes stay pending this long" + PER
    )
    group.add_argument(
        "--pending-errors-ms",
        metavar="MS",
        type=int,
        help="GET sandbox answers 502 this long after create" + PER,
    )
    group.add_argument("--separate-proxy", action=flag, help="the proxy on a port of its own")
    group.add_argument(
        "--stream-idle-ms", metavar="MS", type=int, help="close a stream silent this long" + PER
    )
    group.add_argument(
        "--stream-max-ms", metavar="MS", type=int, help="close any stream this old" + PER
    )
    group.add_argument(
        "--sse-keepalive-ms", metavar="MS", type=int, help="': keepalive' comment interval" + PER
    )
    group.add_argument(
        "--sse-framing", choices=SSE_FRAMINGS, help="cloud: id: lines and CRLF" + PER
    )
    group.add_argument(
        "--require-content-length", action=flag, help="PUT without Content-Length answers 411"
    )
    group.add_argument(
        "--platform-auth", action=flag, help="API keys on token routes, PATs on org routes"
    )
    group.add_argument(
        "--pat",
        metavar="TOKEN",
        help="the token taken as a personal access token (default: none: every token is an API key)",
    )
    group.add_argument(
        "--private-registry",
        action="append",
        default=[],
        metavar="HOST=USER:PASSWORD",
        help="images on HOST need these credentials in spec.json (repeatable)",
    )


_PROFILE_OPTIONS = (
    "start_delay_ms",
    "pending_errors_ms",
    "separate_proxy",
    "stream_idle_ms",
    "stream_max_ms",
    "sse_keepalive_ms",
    "sse_framing",
    "require_content_length",
    "platform_auth",
)


def _registry(text: str) -> tuple[str, tuple[str, str]]:
    host, _, credentials = text.partition("=")
    user, _, password = credentials.partition(":")
    if not (host and user and password):
        raise UsageError(
            f"--private-registry {host or text!r}... is not HOST=USER:PASSWORD",
            hint="e.g. --private-registry registry.example.com=alice:s3cret",
        )
    return host, (user, password)


def config_from(args: argparse.Namespace) -> EmulatorConfig:
    if not args.allow_remote and not is_loopback(args.host):
        raise UsageError(
            f"--host {args.host} is not a loopback address",
            hint="the emulator accepts any token; pass --allow-remote to listen beyond this machine",
        )
    try:
        chosen = {
            name: getattr(args, name)
            for name in _PROFILE_OPTIONS
            if getattr(args, name) is not None
        }
        return EmulatorConfig(
            profile=args.profile,
            **chosen,
            pat=args.pat,
            private_registries=dict(_registry(text) for text in args.private_registry),
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            api_key=args.api_key,
            sign_mode=args.sign_mode,
            latency_ms=args.latency_ms,
            bandwidth_mbps=args.bandwidth_mbps,
            builder=BuilderBehaviour(duration_ms=args.builder_duration_ms),
            allow_remote=args.allow_remote,
        )
    except ValueError as problem:
        raise UsageError(str(problem), hint="see `kiln emulator --help`") from None


def banner(emulator: Emulator, api_key: str | None) -> str:
    token = api_key or EXAMPLE_TOKEN
    return "\n".join(
        [
            f"kiln emulator listening on {emulator.url}",
            f"  profile: {emulator.config.profile}",
            *([f"  sandbox proxy: {emulator.proxy_url}"] if emulator.proxy_url else []),
            f"  data dir: {emulator.data_dir}",
            "  point kiln at it:",
            f"    TENSORLAKE_API_URL={emulator.url} TENSORLAKE_API_KEY={token} kiln build ...",
            "  or the official client:",
            f"    build_sandbox_image({emulator.url!r}, {token!r}, 'Dockerfile', cas=False)",
            f"  inspect: {emulator.url}/_emulator/sandboxes, /_emulator/requests",
            "Press Ctrl-C to stop.",
        ]
    )


def run(args: argparse.Namespace) -> int:
    from kiln.emulator import Emulator

    config = config_from(args)
    try:
        emulator = Emulator(config).start()
    except ConfigError as problem:
        # A --data-dir that cannot be one is a problem with the command line.
        raise UsageError(problem.message, hint=problem.hint) from None
    except OSError as problem:
        raise UsageError(
            f"cannot listen on {config.host}:{config.port}: {problem.strerror or problem}",
            hint="pick another --port, or omit it for a free one",
        ) from None
    print(banner(emulator, config.api_key), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping the emulator", flush=True)
    finally:
        emulator.stop()
    return 0
