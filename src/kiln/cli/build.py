"""``kiln build``, ``kiln import`` and ``kiln diagram``.

A build is planned first, locally, so a missing or malformed Dockerfile is reported (exit 2)
before anything starts. With no credentials in the environment and no ``--api-url``, the build
then runs against the embedded emulator (started in-process, data under the user's state
directory so templates persist between runs); kiln says so in one line, because a user who meant
to build in the cloud must notice.

What ``kiln resume`` and ``kiln submit`` share with these commands is in cli/_common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs

from kiln.builds import Build, start_plan
from kiln.cli._common import (
    add_build_options,
    add_output_options,
    build_options,
    check_context,
    forget_iidfile,
    make_view,
    output_mode,
    route_logs_to_stderr,
    write_iidfile,
)
from kiln.cli._exit import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_STORE_UNAVAILABLE
from kiln.cli._paths import user_state_dir
from kiln.cli._records import mark_embedded
from kiln.cli._signals import interrupts
from kiln.cli._source import add_source_arguments, plan_from_arguments
from kiln.cli._view import View
from kiln.durable import StoreOutage
from kiln.errors import BuildCancelled, ConfigError, KilnError, UsageError
from kiln.plan import BuildPlan
from kiln.store import Store

CREDENTIAL_ENV = ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT")
# The embedded emulator accepts any bearer token; the client still needs one to send.
EMBEDDED_TOKEN = "kiln-embedded-emulator"
EMULATOR_DIR = "emulator"
# Each declared machine (states/<name>.toml) is drawn as <name>.mmd, and <name>.svg with Graphviz.
MERMAID_SUFFIX = ".mmd"
SVG_SUFFIX = ".svg"
GRAPHVIZ = "dot"
# Rendering a dozen states takes milliseconds; a hung `dot` must not hang `kiln diagram`.
GRAPHVIZ_TIMEOUT_S = 30.0


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
    "emulator. Ctrl-C, SIGTERM or SIGHUP cancels (the builder sandbox is deleted; with --cas, the "
    "build on the Image Service is cancelled); a second one "
    "stops at once. Exit status: 0 done, 1 failed, 2 usage or Dockerfile error, 130 cancelled "
    "(143 by SIGTERM, 129 by SIGHUP)."
)


def _add_detach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detach",
        action="store_true",
        help="with --cas: return once the Image Service has the build (admitted, context sealed), "
        "printing its id; kiln logs --follow, kiln resume or a worker take it from there "
        "(default: wait for the end)",
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
    )
    add_source_arguments(build)
    add_build_options(build)
    _add_detach(build)
    add_output_options(build)
    _add_store(build)
    build.set_defaults(func=_run_build)

    imp = sub.add_parser(
        "import",
        help="import a registry image as a sandbox image",
        description="Import a registry image as it is. " + BUILD_DESCRIPTION,
    )
    imp.add_argument(
        "reference", metavar="REF", help="registry image reference, e.g. python:3.12-slim"
    )
    add_build_options(imp)
    _add_detach(imp)
    add_output_options(imp)
    _add_store(imp)
    imp.set_defaults(func=_run_import)

    diagram = sub.add_parser(
        "diagram",
        help="render diagrams/ from states/ (<machine>.mmd; <machine>.svg with Graphviz)",
        description="Draw every machine declared in states/ as a Mermaid file, and as SVG when "
        "Graphviz's `dot` is installed. Run it after changing states/: a test checks that "
        "diagrams/ is fresh.",
    )
    diagram.add_argument(
        "--out", metavar="DIR", default="diagrams", help="output directory (default: diagrams)"
    )
    diagram.set_defaults(func=_run_diagram)


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="where the build is persisted, so `kiln resume` can continue it"
        " (default: $KILN_STORE, else the SQLite file in the state dir)",
    )


# -- commands -----------------------------------------------------------------------------------


def _run_build(args: argparse.Namespace) -> int:
    output_mode(args)
    plan = plan_from_arguments(args)
    check_context(plan)
    return _drive(args, plan)


def _run_import(args: argparse.Namespace) -> int:
    from kiln.plan import plan_import

    output_mode(args)
    return _drive(args, plan_import(args.reference, name=args.name))


def _run_diagram(args: argparse.Namespace) -> int:
    from kiln.machine import load_machine_spec, machine_names, render_dot, render_mermaid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dot = shutil.which(GRAPHVIZ)
    for name in machine_names():
        spec = load_machine_spec(name=name)
        mermaid = out / f"{name}{MERMAID_SUFFIX}"
        mermaid.write_text(render_mermaid(spec), encoding="utf-8")
        print(f"wrote {mermaid}")
        svg = out / f"{name}{SVG_SUFFIX}"
        if dot is None:
            print(f"skipped {svg}: Graphviz `{GRAPHVIZ}` is not installed")
            continue
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


def _drive(args: argparse.Namespace, plan: BuildPlan) -> int:
    remote = _remote_target(args)
    _check_detach(args, remote)
    route_logs_to_stderr()
    view = make_view(args)
    forget_iidfile(args)
    return asyncio.run(_drive_async(args, plan, remote, view))


def _check_detach(args: argparse.Namespace, remote: _Target | None) -> None:
    if not args.detach:
        return
    if not args.cas:
        raise UsageError(
            "--detach needs --cas: a builder-sandbox build runs in this process",
            hint="add --cas, or queue the build for a worker with kiln submit",
        )
    if remote is None:
        raise UsageError(
            "--detach needs a Tensorlake API: the embedded emulator ends with this process",
            hint="set TENSORLAKE_API_KEY (or pass --api-url) to build on a service that stays",
        )


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
    build = start_plan(plan, store=store, **build_options(args), **target.options())
    view.follow(build.state)
    with interrupts(build, view, embedded=target.embedded) as signals:
        with view:
            await build.recorded()
            if target.embedded:
                # Said in the record's log, so that kiln resume, cancel and rm know, later,
                # that nothing can continue this build once this process has ended.
                await mark_embedded(store, build.state.id, target.api_url)
            view.notice(_recorded_notice(build.state.id, embedded=target.embedded))
            async for events in build.event_batches():
                view.events(events)
                if args.detach and build.admitted:
                    await build.detach()
            detached = args.detach and build.admitted
            if detached:
                view.notice(_detached_notice(build.state.id))
        if detached:
            view.detached(build.state)
            return EXIT_OK
        return signals.exit_code(await _report(args, build, view))


def _detached_notice(build_id: str) -> str:
    return (
        f"Detached: build {build_id} goes on on the Image Service (kiln logs --follow "
        f"{build_id} shows it; kiln resume {build_id} or a worker waits for its end)"
    )


def _recorded_notice(build_id: str, *, embedded: bool) -> str:
    """Said before anything else: after a crash, the id is what `kiln resume` needs. A build on
    the embedded emulator cannot be resumed (its sandbox ends with kiln), only looked at."""
    if embedded:
        return f"Build {build_id} (kiln status {build_id} / kiln logs {build_id} show it later)"
    return f"Build {build_id} (continue it after a crash: kiln resume {build_id})"


async def _report(args: argparse.Namespace, build: Build, view: View) -> int:
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
    write_iidfile(args, result)
    view.done(result, build.state)
    return EXIT_OK
