"""``kiln build``, ``kiln import`` and ``kiln diagram``.

A build is planned first, locally, so a missing or malformed Dockerfile is reported (exit 2)
before anything starts. With no credentials in the environment and no ``--api-url``, the build
then runs against the embedded emulator (started in-process, data under the user's state
directory so templates persist between runs); kiln says so in one line, because a user who meant
to build in the cloud must notice.

The helpers ``_add_common``, ``_options`` and ``_make_view`` are shared with
``kiln resume`` and ``kiln submit`` (cli/durable.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import structlog

from kiln.builds import Build, start_plan
from kiln.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_STORE_UNAVAILABLE
from kiln.cli._paths import user_state_dir
from kiln.cli._signals import interrupts
from kiln.cli._source import add_source_arguments, plan_from_arguments
from kiln.cli._view import JsonView, PlainView, RichView, View
from kiln.durable import StoreOutage
from kiln.errors import BuildCancelled, ConfigError, ContextError, KilnError, UsageError
from kiln.plan import BuildPlan, ContextArchive
from kiln.store import Store

CREDENTIAL_ENV = ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT")
# The embedded emulator accepts any bearer token; the client still needs one to send.
EMBEDDED_TOKEN = "kiln-embedded-emulator"
EMULATOR_DIR = "emulator"
DIAGRAM_MMD = "build.mmd"
DIAGRAM_SVG = "build.svg"
GRAPHVIZ = "dot"
# Rendering a dozen states takes milliseconds; a hung `dot` must not hang `kiln diagram`.
GRAPHVIZ_TIMEOUT_S = 30.0
# The machine's logger repeats every build event, which the view already shows; it speaks up
# only for errors. Everything else (store outages, skipped context files) stays at warnings.
BUILD_LOGGER = "kiln.build"
LOG_FORMAT = "kiln: %(levelname)s %(name)s: %(message)s"


BUILD_EPILOG = """\
coming from docker build:
  docker build .                        kiln build .
  docker build -f ci/Dockerfile ctx     kiln build -f ci/Dockerfile ctx
  docker build -t web .                 kiln build -t web .
  docker build - < Dockerfile           kiln build - < Dockerfile
  docker build --build-arg V=1 .        kiln build --build-arg V=1 .
  docker build --target test .          kiln build --target test .
"""

BUILD_DESCRIPTION = (
    "With no TENSORLAKE_API_KEY or TENSORLAKE_PAT and no --api-url, it runs against the embedded "
    "emulator. Ctrl-C, SIGTERM or SIGHUP cancels (the builder sandbox is deleted); a second one "
    "stops at once. Exit status: 0 done, 1 failed, 2 usage or Dockerfile error, 130 cancelled "
    "(143 by SIGTERM, 129 by SIGHUP)."
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``build``, ``import`` and ``diagram``."""
    build = sub.add_parser(
        "build",
        help="build a sandbox image from a Dockerfile (as docker build)",
        usage="%(prog)s [OPTIONS] [PATH | -]",
        description="Build and register a sandbox image, as `docker build` would build it. "
        + BUILD_DESCRIPTION,
        epilog=BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(build)
    _add_common(build)
    _add_store(build)
    build.set_defaults(func=_run_build)

    imp = sub.add_parser(
        "import",
        help="import a registry image as a sandbox image",
        description="Import a registry image as it is. " + BUILD_DESCRIPTION,
    )
    imp.add_argument("reference", help="registry image reference, e.g. python:3.12-slim")
    _add_common(imp)
    _add_store(imp)
    imp.set_defaults(func=_run_import)

    diagram = sub.add_parser(
        "diagram", help="render diagrams/ from states/ (build.mmd; build.svg with Graphviz)"
    )
    diagram.add_argument(
        "--out", metavar="DIR", default="diagrams", help="output directory (default: diagrams)"
    )
    diagram.set_defaults(func=_run_diagram)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", help="registered image name (default: derived from the Dockerfile or reference)"
    )
    parser.add_argument(
        "--public", action="store_true", help="make the image public (default: private)"
    )
    parser.add_argument(
        "--disk-mb",
        metavar="N",
        type=_positive_int,
        help="target rootfs size in MiB (default: the parent template's, else 10240)",
    )
    parser.add_argument(
        "--builder-disk-mb",
        metavar="N",
        type=_positive_int,
        help="builder sandbox disk in MiB (default: what the platform proposes)",
    )
    parser.add_argument(
        "--cpus",
        metavar="F",
        type=_positive_float,
        help="builder sandbox CPUs (default: what the platform proposes)",
    )
    parser.add_argument(
        "--memory-mb",
        metavar="N",
        type=_positive_int,
        help="builder sandbox memory in MiB (default: what the platform proposes)",
    )
    parser.add_argument(
        "--docker-compat", action="store_true", help="ask for Docker compat (default: off)"
    )
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help="Tensorlake API URL (default: $TENSORLAKE_API_URL, else the embedded emulator when "
        "no credentials are set)",
    )
    parser.add_argument(
        "--deadline",
        metavar="S",
        type=_positive_float,
        help="overall limit in seconds (default: none)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON event per line on stdout (default: a live view on stderr)",
    )


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="where the build is persisted, so `kiln resume` can continue it"
        " (default: $KILN_STORE, else the SQLite file in the state dir)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The build options of ``_add_common``, named as the library takes them."""
    return {"name": args.name, **_build_options(args)}


def _build_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "public": args.public,
        "disk_mb": args.disk_mb,
        "builder_disk_mb": args.builder_disk_mb,
        "cpus": args.cpus,
        "memory_mb": args.memory_mb,
        "docker_compat": args.docker_compat,
        "deadline": args.deadline,
    }


# -- commands -----------------------------------------------------------------------------------


def _run_build(args: argparse.Namespace) -> int:
    plan = plan_from_arguments(args)
    _check_context(plan)
    return _drive(args, plan)


def _run_import(args: argparse.Namespace) -> int:
    from kiln.plan import plan_import

    return _drive(args, plan_import(args.reference, name=args.name))


def _check_context(plan: BuildPlan) -> None:
    """Context problems are the caller's to fix: say so now (exit 2), not after a sandbox was
    made. A missing directory, an unreadable file, a bad .dockerignore pattern, a link that
    cannot be read: the walk the upload will make finds them all."""
    if plan.context_dir is None:
        return
    if not os.path.isdir(plan.context_dir):
        raise ContextError(
            f"build context not found: {plan.context_dir}",
            hint="pass an existing directory as PATH (or --context with a Dockerfile PATH)",
        )
    # Files that cannot be archived (FIFOs, sockets) are skipped with a warning; the build
    # reports those itself when it uploads.
    archive = ContextArchive(
        plan.context_dir, dockerfile=plan.dockerfile_path, on_warning=lambda _text: None
    )
    archive.entries()


def _run_diagram(args: argparse.Namespace) -> int:
    from kiln.machine import load_machine_spec, render_dot, render_mermaid

    spec = load_machine_spec()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mermaid = out / DIAGRAM_MMD
    mermaid.write_text(render_mermaid(spec), encoding="utf-8")
    print(f"wrote {mermaid}")
    dot = shutil.which(GRAPHVIZ)
    if dot is None:
        print(f"skipped {out / DIAGRAM_SVG}: Graphviz `{GRAPHVIZ}` is not installed")
        return EXIT_OK
    svg = out / DIAGRAM_SVG
    _render_svg(dot, render_dot(spec), svg)
    print(f"wrote {svg}")
    return EXIT_OK


def _render_svg(dot: str, source: str, target: Path) -> None:
    try:
        rendered = subprocess.run(
            [dot, "-Tsvg"],
            input=source.encode(),
            capture_output=True,
            check=True,
            timeout=GRAPHVIZ_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        raise KilnError(
            f"Graphviz failed to render {target}: {error} {detail.decode(errors='replace')}",
            hint=f"check that `{dot} -V` works, or uninstall Graphviz to write only the .mmd",
        ) from None
    target.write_bytes(rendered.stdout)


# -- driving a build ----------------------------------------------------------------------------


def _make_view(args: argparse.Namespace) -> View:
    if args.json:
        return JsonView(sys.stdout)
    if sys.stderr.isatty():
        return RichView()
    return PlainView(sys.stderr)


def _drive(args: argparse.Namespace, plan: BuildPlan) -> int:
    remote = _remote_target(args)
    _route_logs_to_stderr()
    view = _make_view(args)
    return asyncio.run(_drive_async(args, plan, remote, view))


def _route_logs_to_stderr() -> None:
    """Send library and emulator logs to stderr, warnings and up.

    stdout belongs to the view (with ``--json``, to JSON lines only), and unconfigured structlog
    prints to stdout. Logs go through stdlib logging, as the library's own fallback does; a
    handler already installed (a caller embedding ``main()``, pytest) is kept.
    """
    if not structlog.is_configured():
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.processors.format_exc_info,
                structlog.processors.KeyValueRenderer(key_order=["event"]),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger(BUILD_LOGGER).setLevel(logging.ERROR)


@attrs.frozen
class _Target:
    """Where a build runs: an API URL (None: from the environment), or the embedded emulator."""

    api_url: str | None
    embedded: bool = False

    def options(self) -> dict[str, Any]:
        if self.embedded:
            return {"api_url": self.api_url, "api_key": EMBEDDED_TOKEN}
        return {"api_url": self.api_url}


def _remote_target(args: argparse.Namespace) -> _Target | None:
    """The API the user named, by ``--api-url`` or by credentials, checked before anything
    starts; None when they named none (then the embedded emulator is used)."""
    if not args.api_url and not any(os.environ.get(name, "").strip() for name in CREDENTIAL_ENV):
        return None
    from kiln.api import ApiSettings

    try:
        ApiSettings.from_env(api_url=args.api_url)
    except ConfigError as error:
        # Missing credentials or a malformed URL: the command line (and its environment) is
        # incomplete, which is a usage error; no build was attempted.
        raise UsageError(str(error), hint=error.hint) from None
    return _Target(args.api_url)


@contextlib.asynccontextmanager
async def _target(remote: _Target | None, view: View) -> AsyncIterator[_Target]:
    """The API the user named, else an embedded emulator for as long as the build runs."""
    if remote is not None:
        yield remote
        return
    from kiln.emulator import Emulator, EmulatorConfig

    data_dir = _emulator_dir()
    async with Emulator(EmulatorConfig(data_dir=data_dir)) as emulator:
        view.notice(
            f"No TENSORLAKE_API_KEY or TENSORLAKE_PAT: building against the embedded emulator "
            f"at {emulator.url} (data in {data_dir})"
        )
        yield _Target(emulator.url, embedded=True)


def _emulator_dir() -> Path:
    data_dir = user_state_dir() / EMULATOR_DIR
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the embedded emulator's directory {data_dir}: {error.strerror}",
            hint="point XDG_STATE_HOME at a writable directory, or pass --api-url",
        ) from None
    return data_dir


async def _drive_async(
    args: argparse.Namespace, plan: BuildPlan, remote: _Target | None, view: View
) -> int:
    from kiln.store import open_store

    store = open_store(args.store)
    try:
        async with _target(remote, view) as target:
            return await _follow(args, plan, view, target, store)
    finally:
        await store.close()


async def _follow(
    args: argparse.Namespace,
    plan: BuildPlan,
    view: View,
    target: _Target,
    store: Store,
) -> int:
    build = start_plan(plan, store=store, **_build_options(args), **target.options())
    with interrupts(build, view, embedded=target.embedded) as signals:
        with view:
            await build.recorded()
            view.notice(_recorded_notice(build.state.id, embedded=target.embedded))
            async for event in build.events():
                view.event(event)
        return signals.exit_code(await _report(build, view))


def _recorded_notice(build_id: str, *, embedded: bool) -> str:
    """Said before anything else: after a crash, the id is what `kiln resume` needs. A build on
    the embedded emulator cannot be resumed (its sandbox ends with kiln), only looked at."""
    if embedded:
        return f"Build {build_id} (kiln status {build_id} / kiln logs {build_id} show it later)"
    return f"Build {build_id} (continue it after a crash: kiln resume {build_id})"


async def _report(build: Build, view: View) -> int:
    """Show how the build ended; the exit code says the same."""
    try:
        result = await build.result()
    except BuildCancelled as error:
        view.failed(error, build.state)
        return EXIT_CANCELLED
    except StoreOutage as error:
        view.failed(error, build.state)
        return EXIT_STORE_UNAVAILABLE
    except KilnError as error:
        view.failed(error, build.state)
        return EXIT_FAILED
    view.done(result, build.state)
    return EXIT_OK
