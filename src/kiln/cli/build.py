"""``kiln build``, ``kiln import`` and ``kiln diagram``.

With no credentials in the environment and no ``--api-url``, the build runs against the embedded
emulator (started in-process, data under the user's state directory so templates persist between
runs); kiln says so in one line, because a user who meant to build in the cloud must notice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from kiln.cli._paths import user_state_dir
from kiln.cli._view import JsonView, PlainView, RichView, View
from kiln.errors import BuildCancelled, KilnError
from kiln.store import Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 130
CREDENTIAL_ENV = ("TENSORLAKE_API_KEY", "TENSORLAKE_PAT")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``build``, ``import`` and ``diagram``."""
    build = sub.add_parser("build", help="build a sandbox image from a Dockerfile")
    build.add_argument("dockerfile", nargs="?", default="Dockerfile", help="default: ./Dockerfile")
    build.add_argument("--context", help="build context directory (default: the Dockerfile's)")
    _add_common(build)
    _add_store(build)
    build.set_defaults(func=_run_build)

    imp = sub.add_parser("import", help="import a registry image as a sandbox image")
    imp.add_argument("reference", help="registry image reference, e.g. python:3.12-slim")
    _add_common(imp)
    _add_store(imp)
    imp.set_defaults(func=_run_import)

    diagram = sub.add_parser("diagram", help="render diagrams/ from states/")
    diagram.add_argument("--out", default="diagrams", help="output directory (default: diagrams)")
    diagram.set_defaults(func=_run_diagram)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="registered image name (default: derived)")
    parser.add_argument("--public", action="store_true", help="make the image public")
    parser.add_argument("--disk-mb", type=_positive_int, help="target rootfs size in MiB")
    parser.add_argument("--builder-disk-mb", type=_positive_int, help="builder sandbox disk")
    parser.add_argument("--cpus", type=_positive_float, help="builder sandbox CPUs")
    parser.add_argument("--memory-mb", type=_positive_int, help="builder sandbox memory in MiB")
    parser.add_argument("--docker-compat", action="store_true", help="ask for Docker compat")
    parser.add_argument("--api-url", help="Tensorlake API URL (default: $TENSORLAKE_API_URL)")
    parser.add_argument("--deadline", type=_positive_float, help="overall limit in seconds")
    parser.add_argument("--json", action="store_true", help="one JSON event per line on stdout")


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
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
    return {
        "name": args.name,
        "public": args.public,
        "disk_mb": args.disk_mb,
        "builder_disk_mb": args.builder_disk_mb,
        "cpus": args.cpus,
        "memory_mb": args.memory_mb,
        "docker_compat": args.docker_compat,
        "deadline": args.deadline,
    }


def _run_build(args: argparse.Namespace) -> int:
    from kiln import start_build

    def start(**kwargs: Any) -> Any:
        return start_build(args.dockerfile, context=args.context, **_options(args), **kwargs)

    return _drive(args, start)


def _run_import(args: argparse.Namespace) -> int:
    from kiln import start_import

    def start(**kwargs: Any) -> Any:
        return start_import(args.reference, **_options(args), **kwargs)

    return _drive(args, start)


def _run_diagram(args: argparse.Namespace) -> int:
    from kiln.machine import load_machine_spec, render_mermaid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "build.mmd"
    target.write_text(render_mermaid(load_machine_spec()), encoding="utf-8")
    print(f"wrote {target}")
    return EXIT_OK


def _make_view(args: argparse.Namespace) -> View:
    if args.json:
        return JsonView(sys.stdout)
    if sys.stderr.isatty():
        return RichView()
    return PlainView(sys.stderr)


def _drive(args: argparse.Namespace, start: Callable[..., Any]) -> int:
    view = _make_view(args)
    try:
        return asyncio.run(_drive_async(args, start, view))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_CANCELLED


@contextlib.asynccontextmanager
async def _target(args: argparse.Namespace, view: View) -> AsyncIterator[str | None]:
    """Yield the API URL to build against: the given one, or an embedded emulator's."""
    if args.api_url or any(os.environ.get(name) for name in CREDENTIAL_ENV):
        yield args.api_url
        return
    from kiln.emulator import Emulator, EmulatorConfig

    data_dir = user_state_dir() / "emulator"
    data_dir.mkdir(parents=True, exist_ok=True)
    async with Emulator(EmulatorConfig(data_dir=data_dir)) as emulator:
        view.notice(
            f"No TENSORLAKE_API_KEY or TENSORLAKE_PAT: building against the embedded emulator "
            f"at {emulator.url} (data in {data_dir})"
        )
        yield emulator.url


async def _drive_async(args: argparse.Namespace, start: Callable[..., Any], view: View) -> int:
    from kiln.store import open_store

    store = open_store(args.store)
    try:
        async with _target(args, view) as api_url:
            return await _follow(args, start, view, api_url, store)
    finally:
        await store.close()


async def _follow(
    args: argparse.Namespace,
    start: Callable[..., Any],
    view: View,
    api_url: str | None,
    store: Store,
) -> int:
    embedded = api_url is not None and not args.api_url
    kwargs: dict[str, Any] = {"api_url": api_url} if api_url else {}
    if embedded:
        kwargs["api_key"] = "kiln-embedded-emulator"
    build = start(store=store, **kwargs)
    await build.recorded()
    # Before anything else: after a crash, this id is what `kiln resume` needs.
    view.notice(f"Build {build.state.id} (continue it after a crash: kiln resume {build.state.id})")
    with _interrupts(build, view), view:
        async for event in build.events():
            view.event(event)
        try:
            result = await build.result()
        except BuildCancelled as error:
            view.failed(error, build.state)
            return EXIT_CANCELLED
        except KilnError as error:
            view.failed(error, build.state)
            return EXIT_FAILED
    view.done(result, build.state)
    return EXIT_OK


@contextlib.contextmanager
def _interrupts(build: Any, view: View) -> Any:
    """First Ctrl-C cancels the build (cleanup still runs); a second one aborts cleanup."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            view.notice("Cancelling: deleting the builder sandbox (Ctrl-C again to abort cleanup)")
            build.cancel()
            return
        sandbox = getattr(build.state, "sandbox_id", None)
        left = f"builder sandbox {sandbox} may be left running" if sandbox else "no sandbox left"
        view.notice(f"Aborted during cleanup: {left}")
        if main_task is not None:
            main_task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):  # not the main thread: leave Ctrl-C default
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
