"""`kiln emulator`: run the local Tensorlake-compatible server until Ctrl-C."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from kiln.emulator import BuilderBehaviour, Emulator, EmulatorConfig
from kiln.emulator._config import DEFAULT_HOST, SIGN_MODES, is_loopback
from kiln.errors import UsageError

# Any token works unless --api-key is given; this one is only printed as an example.
EXAMPLE_TOKEN = "any-token"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `kiln emulator` to `sub`."""
    parser = sub.add_parser(
        "emulator",
        help="run a local Tensorlake-compatible build server",
        description="Serve Tensorlake's platform, sandbox lifecycle and sandbox proxy APIs on one "
        "loopback port, with virtual sandboxes and a builder stand-in, until Ctrl-C.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--data-dir", type=Path, help="keep templates and blobs here (default: a temp dir)"
    )
    parser.add_argument("--api-key", help="accept only this bearer token (default: any)")
    parser.add_argument(
        "--sign-mode",
        choices=SIGN_MODES,
        default="legacy",
        help="prepare answers the legacy upload block, or the new snapshotRelPath",
    )
    parser.add_argument(
        "--start-delay-ms", type=int, default=0, help="sandboxes stay pending this long"
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every response")
    parser.add_argument("--bandwidth-mbps", type=float, help="pace request and response bodies")
    parser.add_argument(
        "--builder-duration-ms", type=int, default=0, help="how long the builder stand-in works"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="permit a non-loopback --host (no real auth!)"
    )
    parser.set_defaults(func=run)


def config_from(args: argparse.Namespace) -> EmulatorConfig:
    if not args.allow_remote and not is_loopback(args.host):
        raise UsageError(
            f"--host {args.host} is not a loopback address",
            hint="the emulator accepts any token; pass --allow-remote to listen beyond this machine",
        )
    try:
        return EmulatorConfig(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            api_key=args.api_key,
            sign_mode=args.sign_mode,
            start_delay_ms=args.start_delay_ms,
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
    config = config_from(args)
    try:
        emulator = Emulator(config).start()
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
