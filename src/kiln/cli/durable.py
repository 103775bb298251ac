"""Persisted builds: ``kiln resume``, ``cancel``, ``status``, ``ls``, ``logs``, ``reap``,
``submit`` and ``worker``.

Every command reads the store named by ``--store``, else ``$KILN_STORE``, else the default SQLite
file under the user's state directory: the same one ``kiln build`` writes to.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from kiln._time import iso8601
from kiln.cli._common import (
    add_build_options,
    build_options,
    check_context,
    make_view,
    positive_int,
)
from kiln.cli._exit import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_STORE_UNAVAILABLE
from kiln.cli._modes import OWES_RESULT
from kiln.cli._records import (
    EMBEDDED_EVENT,
    cancelling,
    dead_embedded,
    declared_states,
    owner_gone,
    ran_embedded,
    removal_hint,
    running,
)
from kiln.cli._signals import interrupts
from kiln.cli._view import ended_result
from kiln.durable import StoreOutage, unrecorded_sandboxes
from kiln.errors import BuildCancelled, ConfigError, KilnError, UsageError
from kiln.machine import BuildState, Trigger, load_machine_spec
from kiln.store import BuildNotFound, BuildRecord, EventRow, Store, open_store

DAY_S = 86_400.0


def _exit_for(final: str) -> int:
    """The exit status of a build that ended in ``final`` (its names read from states/)."""
    spec = load_machine_spec()
    if final == spec.final_of(Trigger.SUCCEED):
        return EXIT_OK
    if final == spec.final_of(Trigger.CANCEL):
        return EXIT_CANCELLED
    return EXIT_FAILED


# How many of the last build log lines `kiln status` shows: the lines just before a failure.
STATUS_LOG_LINES = 10
# How often `kiln logs --follow` looks for new lines; the running build writes about as often.
FOLLOW_POLL_S = 0.5
# How long `kiln logs --follow` waits for someone to run a build nobody runs before it says so
# and stops, as `docker logs -f` does on a stopped container: longer than an idle worker's
# longest wait between claims (8 s), so a just-submitted build is not given up on before a
# worker could claim it.
FOLLOW_UNOWNED_GRACE_S = 10.0
LIST_LIMIT = 100
# `kiln ls --state running`: not a state of the machine but what a user asks first, builds a live
# process runs now (in any of the machine's states).
RUNNING = "running"
LS_HEADER = ("ID", "STATE", "NAME", "SANDBOX", "UPDATED")
ID_HELP = "build id (or a unique prefix)"
STORE_HELP = "build store URL (default: $KILN_STORE, else the SQLite file in the state dir)"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the commands for persisted builds."""
    resume = store_command(
        sub,
        "resume",
        "continue a persisted build from where it stopped",
        "Continue a build whose process stopped (a crash, a closed terminal), in the state it was "
        "in: a builder already running is reattached to, not started again. Credentials come "
        "from the environment, as for kiln build.",
        _resume,
    )
    resume.add_argument("build_id", metavar="ID", help=ID_HELP)
    # Its --json streams a build's events: they end with a result line, whatever happens.
    resume.set_defaults(**{OWES_RESULT: True})
    resume.add_argument(
        "--retry-lost-sandbox",
        action="store_true",
        help="if the builder sandbox is gone, start over from prepare instead of failing",
    )
    resume.add_argument(
        "--json",
        action="store_true",
        help="one JSON event per line on stdout (default: a live view on stderr)",
    )

    cancel = store_command(
        sub,
        "cancel",
        "ask a build to stop (from any process)",
        "Record a cancel request in the store. The process running the build sees it, deletes "
        "the builder sandbox (a --cas build: cancels its build on the Image Service) and ends "
        "the build as cancelled; a build nobody runs is ended so "
        "by the next kiln resume or worker.",
        _cancel,
    )
    cancel.add_argument("build_id", metavar="ID", help=ID_HELP)

    status = store_command(
        sub,
        "status",
        "show a build: state, phases, sandbox, log, error",
        "Show one build as the store has it: its state and owner, the time spent in each phase, "
        "its builder sandbox, the last lines of its log, and the error and advice if it failed.",
        _status,
    )
    status.add_argument("build_id", metavar="ID", help=ID_HELP)
    status.add_argument("--json", action="store_true", help="print JSON (default: text)")

    ls = store_command(
        sub,
        "ls",
        "list builds, newest first",
        "List the builds in the store, newest first, one line each: id, state, image name, "
        "builder sandbox and when it last changed.",
        _ls,
    )
    choices = state_filters()
    ls.add_argument(
        "--state",
        metavar="STATE",
        choices=choices,
        help=f"only builds in STATE, one of {', '.join(choices)} ({RUNNING}: a live process "
        "runs it now) (default: all)",
    )
    ls.add_argument(
        "--limit", metavar="N", type=positive_int, default=LIST_LIMIT, help="at most N builds"
    )
    ls.add_argument("--json", action="store_true", help="print a JSON list (default: a table)")

    logs = store_command(
        sub,
        "logs",
        "print a build's persisted log",
        "Print a build's persisted log: the builder's output and kiln's notes on each phase. "
        "The log keeps its head and tail; a mark shows where lines were dropped.",
        _logs,
    )
    logs.add_argument("build_id", metavar="ID", help=ID_HELP)
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until it ends (default: off)"
    )

    reap = store_command(
        sub,
        "reap",
        "delete builder sandboxes no live build owns",
        "Delete the builder sandboxes of builds whose process is gone, and list sandboxes that "
        "may exist but were never recorded (a create whose answer was lost).",
        _reap,
    )
    reap.add_argument("--dry-run", action="store_true", help="list them, delete nothing")

    submit = store_command(
        sub,
        "submit",
        "queue a Dockerfile build for a worker",
        "Plan a Dockerfile build here (a bad Dockerfile or context fails now) and queue it in "
        "the store; a kiln worker on a host that reads the same context runs it. Prints its id.",
        _submit,
    )
    submit.add_argument(
        "dockerfile", metavar="FILE", nargs="?", default="Dockerfile", help="default: Dockerfile"
    )
    submit.add_argument(
        "--context",
        metavar="DIR",
        help="build context directory, which the worker must read (default: the Dockerfile's)",
    )
    add_build_options(submit)

    worker = store_command(
        sub,
        "worker",
        "run queued and stalled builds from a shared store",
        "Claim queued builds, and builds whose process is gone, from a shared store (PostgreSQL "
        "for many hosts) and run them, holding a lease on each. SIGTERM or Ctrl-C drains: no new "
        "claims, running builds stop at a persisted point (another worker continues them). "
        "Logs JSON lines on stderr.",
        _worker,
    )
    worker.add_argument(
        "--concurrency", metavar="N", type=positive_int, default=1, help="builds at once"
    )
    worker.add_argument(
        "--worker-id", metavar="NAME", help="name in ownership records (default: per process)"
    )
    worker.add_argument("--lease-s", metavar="S", type=_seconds, help="lease length (default: 30)")
    worker.add_argument(
        "--heartbeat-s", metavar="S", type=_seconds, help="lease renewal (default: 10)"
    )
    worker.add_argument(
        "--poll-s",
        metavar="S",
        type=_seconds,
        help="first idle wait between claims (default: 1, up to 8)",
    )
    worker.add_argument(
        "--retention-days",
        metavar="DAYS",
        type=_seconds,
        help="delete finished builds and their logs this long after they ended (default: 7)",
    )


def store_command(
    sub: argparse._SubParsersAction[Any],
    name: str,
    help_text: str,
    description: str,
    run: Callable[[argparse.Namespace, Store], Awaitable[int]],
) -> argparse.ArgumentParser:
    """A subcommand that works on the store given by ``--store``: ``run`` gets it opened."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description)
    parser.add_argument("--store", metavar="URL", help=STORE_HELP)
    parser.set_defaults(func=lambda args: with_store(args, run))
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def with_store(
    args: argparse.Namespace, run: Callable[[argparse.Namespace, Store], Awaitable[int]]
) -> int:
    async def main() -> int:
        store = open_store(args.store)
        try:
            return await run(args, store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return EXIT_CANCELLED


async def _find(store: Store, build_id: str) -> BuildRecord:
    record = await store.get(build_id)
    if record is None:
        raise BuildNotFound(build_id)
    return record


# -- resume -------------------------------------------------------------------------------------


async def _resume(args: argparse.Namespace, store: Store) -> int:
    from kiln.builds import resume

    record = await _find(store, args.build_id)
    if record.final:
        if args.json:
            print(json.dumps(ended_result(BuildState.from_dict(record.data)), default=str))
            return _exit_for(record.state)
        print(f"build {record.id} already ended: {record.state} (not run again)")
        _print_status(record, await store.events(record.id))
        return _exit_for(record.state)
    if await _dead_embedded(store, record):
        raise KilnError(dead_embedded(record), hint=removal_hint(record))
    build = await resume(record.id, store=store, retry_lost_sandbox=args.retry_lost_sandbox)
    view = make_view(args)
    view.follow(build.state)
    view.notice(f"Resuming build {record.id} from {build.state.state!r}")
    with interrupts(build, view) as signals, view:
        async for events in build.event_batches():
            view.events(events)
        try:
            result = await build.result()
        except BuildCancelled as error:
            view.failed(error, build.state)
            return signals.exit_code(EXIT_CANCELLED)
        except StoreOutage as error:
            view.failed(error, build.state)
            return EXIT_STORE_UNAVAILABLE
        except KilnError as error:
            view.failed(error, build.state)
            return EXIT_FAILED
    view.done(result, build.state)
    return EXIT_OK


# -- cancel -------------------------------------------------------------------------------------


async def _cancel(args: argparse.Namespace, store: Store) -> int:
    record = await _find(store, args.build_id)
    if await _dead_embedded(store, record):
        print(f"{dead_embedded(record)}: {removal_hint(record)}")
        return EXIT_OK
    if not await store.request_cancel(record.id):
        print(f"build {record.id} already ended: {record.state}")
        return EXIT_OK
    if record.owner is not None and running(record):
        print(
            f"cancel requested for build {record.id} ({record.state}); "
            f"{record.owner.describe()} stops it and {cancelling(record)}"
        )
    else:
        print(
            f"cancel requested for build {record.id} ({record.state}); nothing runs it now: "
            f"`kiln resume {record.id}` (or a worker) {cancelling(record)} and ends it as cancelled"
        )
    return EXIT_OK


# -- status -------------------------------------------------------------------------------------


async def _status(args: argparse.Namespace, store: Store) -> int:
    record = await _find(store, args.build_id)
    events = await store.events(record.id)
    if args.json:
        print(json.dumps(status_dict(record, events), indent=2, default=str))
    else:
        _print_status(record, events)
        if await _dead_embedded(store, record):
            print(f"note      {dead_embedded(record)}: {removal_hint(record)}")
    return EXIT_OK


async def _dead_embedded(store: Store, record: BuildRecord) -> bool:
    """Whether nothing can continue the build: it ran on the embedded emulator of a kiln
    process that has ended (a live one still runs it, and answers cancel)."""
    return not record.final and not running(record) and await ran_embedded(store, record)


def status_dict(record: BuildRecord, events: Sequence[EventRow]) -> dict[str, Any]:
    """What ``kiln status --json`` prints."""
    data = record.data
    error = data.get("error")
    return {
        **json_summary(record),
        "version": record.version,
        "final": record.final,
        "owner": None if record.owner is None else record.owner.describe(),
        "lease_expires_at": _iso(record.lease_expires_at),
        "cancel_requested": record.cancel_requested,
        "remote_build_id": data.get("build_id"),
        "key": (data.get("cache") or {}).get("key"),
        "cached_from": data.get("cached_from"),
        "result": data.get("result"),
        "error": error,
        "timeline": timeline(events, record),
        "resumes": [
            {"at": iso8601(e.time), "state": e.data.get("state"), "owner": e.data.get("owner")}
            for e in events
            if e.kind == "resumed"
        ],
        "log_tail": log_tail(events),
        "events_dropped": record.events_dropped,
        "unrecorded_sandboxes": [
            {
                **sandbox.to_dict(),
                "requested_at": iso8601(sandbox.requested_at),
                "expires_by": iso8601(sandbox.expires_by),
            }
            for sandbox in unrecorded_sandboxes(record, time.time())
        ],
    }


def timeline(events: Sequence[EventRow], record: BuildRecord) -> list[dict[str, Any]]:
    """One row per phase the build went through, with the time spent in it, from its log."""
    rows = [
        {
            "phase": event.data.get("source"),
            "duration_s": round(float(event.data.get("duration_s", 0.0)), 3),
            "then": event.data.get("trigger"),
            "to": event.data.get("dest"),
        }
        for event in events
        if event.kind == "transition"
    ]
    if not record.final:
        since = record.data.get("state_entered_at") or record.updated_at
        rows.append(
            {
                "phase": record.state,
                "duration_s": round(max(0.0, time.time() - float(since)), 3),
                "then": None,
                "to": None,
            }
        )
    return rows


def log_tail(events: Sequence[EventRow], lines: int = STATUS_LOG_LINES) -> list[str]:
    log = [str(e.data.get("message", "")) for e in events if e.kind == "build_log"]
    return log[-lines:]


def _print_status(record: BuildRecord, events: Sequence[EventRow]) -> None:
    info = status_dict(record, events)
    print(f"build     {record.id}  ({record.name})")
    print(
        f"state     {_state_text(record)}{'  (cancel requested)' if record.cancel_requested else ''}"
    )
    print(f"created   {_when(record.created_at)}   updated {_when(record.updated_at)}")
    print(f"sandbox   {record.sandbox_id or '-'}")
    for sandbox in unrecorded_sandboxes(record, time.time()):
        print(f"unrecorded {sandbox.describe()}")
    if record.owner is not None:
        gone = "  (its process is gone)" if owner_gone(record.owner) else ""
        print(f"owner     {info['owner']}, lease until {_when(record.lease_expires_at)}{gone}")
    if info["result"]:
        print(f"template  {info['result'].get('id', '-')}")
    if info["key"]:
        print(f"key       {info['key']}")
    if info["cached_from"]:
        print(f"cached    from build {info['cached_from']} (nothing was built)")
    for resumed in info["resumes"]:
        at = datetime.datetime.fromisoformat(resumed["at"]).timestamp()
        print(f"resumed   in {resumed['state']} by {resumed['owner']} at {_when(at)}")
    print("phases")
    for row in info["timeline"]:
        ongoing = "  (in progress)" if row["then"] is None else ""
        print(f"  {row['phase']:<15} {row['duration_s']:>9.2f}s  {row['then'] or ''}{ongoing}")
    if info["log_tail"]:
        print("last log lines")
        for line in info["log_tail"]:
            print(f"  | {line}")
    error = info["error"]
    if error:
        print(f"error     {error.get('message')}")
        if error.get("hint"):
            print(f"hint      {error['hint']}")
        for advice in error.get("advice") or ():
            print(f"advice    {advice}")


def json_summary(record: BuildRecord) -> dict[str, Any]:
    """A build's summary as ``kiln ls --json`` prints it: times as ISO 8601, as the text shows
    them (to the millisecond, in UTC)."""
    summary = dict(record.summary())
    summary.update(created_at=iso8601(record.created_at), updated_at=iso8601(record.updated_at))
    # Served from the build cache: an earlier build's template, nothing built.
    summary["cached"] = record.data.get("cached_from") is not None
    return summary


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso8601(timestamp)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds")


# -- ls -----------------------------------------------------------------------------------------


def state_filters() -> list[str]:
    """What ``kiln ls --state`` takes: running, then the states and finals of every declared
    machine (read from states/, never spelled here)."""
    return [RUNNING, *declared_states(unfinished=True), *declared_states(unfinished=False)]


async def _ls(args: argparse.Namespace, store: Store) -> int:
    records = await _listed(store, args.state, args.limit)
    if args.json:
        print(json.dumps([json_summary(record) for record in records], indent=2))
        return EXIT_OK
    print(_ls_row(*LS_HEADER))
    for record in records:
        print(
            _ls_row(
                record.id,
                _state_text(record),
                record.name,
                record.sandbox_id or "-",
                _when(record.updated_at),
            )
        )
    return EXIT_OK


def _ls_row(build_id: str, state: str, name: str, sandbox: str, updated: str) -> str:
    return f"{build_id:<32}  {state:<14} {name:<24} {sandbox:<24} {updated}"


async def _listed(store: Store, state: str | None, limit: int) -> list[BuildRecord]:
    if state != RUNNING:
        return await store.list(state=state, limit=limit)
    # The newest `limit` builds of each unfinished state, then those a live process holds: a
    # running build is among the newest of its state unless `limit` stalled ones came after it.
    found = [
        record
        for name in declared_states(unfinished=True)
        for record in await store.list(state=name, limit=limit)
        if running(record)
    ]
    found.sort(key=lambda record: record.created_at, reverse=True)
    return found[:limit]


def _state_text(record: BuildRecord) -> str:
    return f"{record.state} (cached)" if record.data.get("cached_from") else record.state


# -- logs ---------------------------------------------------------------------------------------


async def _logs(args: argparse.Namespace, store: Store) -> int:
    record = await _find(store, args.build_id)
    seen = 0
    unowned_since: float | None = None
    while True:
        for event in await store.events(record.id, after_seq=seen):
            if seen and event.seq > seen + 1:
                print(
                    f"-- ({event.seq - seen - 1} events dropped here: the log keeps its head and tail)"
                )
            seen = event.seq
            line = log_line(event)
            if line is not None:
                print(line, flush=True)
        if not args.follow or record.final:
            return EXIT_OK
        if running(record):
            unowned_since = None
        else:
            unowned_since = unowned_since or time.monotonic()
            if time.monotonic() - unowned_since >= FOLLOW_UNOWNED_GRACE_S:
                notice = (
                    f"kiln: {dead_embedded(record)}: stopped following"
                    if await ran_embedded(store, record)
                    else _unowned_notice(record)
                )
                print(notice, file=sys.stderr)
                return EXIT_OK
        await asyncio.sleep(FOLLOW_POLL_S)
        # Read the record after the events: a final record means every event is written.
        record = await _find(store, record.id)


def _unowned_notice(record: BuildRecord) -> str:
    return (
        f"kiln: build {record.id} is in {record.state} but nobody runs it (no live process owns"
        f" it): stopped following. `kiln resume {record.id}` (or a worker) continues it"
    )


def log_line(event: EventRow) -> str | None:
    """How ``kiln logs`` prints one persisted event."""
    data = event.data
    if event.kind == "build_log":
        return str(data.get("message", ""))
    if event.kind == "status":
        return f"-- {data.get('message', '')}"
    if event.kind == "warning":
        return f"-- warning: {data.get('message', '')}"
    if event.kind == EMBEDDED_EVENT:
        return f"-- runs on the embedded emulator at {data.get('api_url')} (it ends with its kiln)"
    if event.kind == "transition":
        why = f": {data['reason']}" if data.get("reason") else ""
        return f"-- {data.get('source')} -> {data.get('dest')} ({data.get('trigger')}{why})"
    return f"-- {event.kind}: {json.dumps(data, default=str)}"


# -- reap ---------------------------------------------------------------------------------------


async def _reap(args: argparse.Namespace, store: Store) -> int:
    from kiln.durable import reap, unattended_remote_builds, unrecorded

    orphans = await reap(store, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for orphan in orphans:
        print(f"{verb} sandbox {orphan.sandbox_id} of build {orphan.build_id}: {orphan.reason}")
    if not orphans:
        print("no orphaned builder sandboxes")
    for sandbox in await unrecorded(store):
        print(f"build {sandbox.build_id}: {sandbox.describe()}")
    for remote in await unattended_remote_builds(store):
        print(f"build {remote.build_id}: {remote.describe()}")
    return EXIT_OK


# -- submit -------------------------------------------------------------------------------------


async def _submit(args: argparse.Namespace, store: Store) -> int:
    from kiln.builds import submit
    from kiln.plan import plan_dockerfile

    # Planned here first, so a bad context fails now (exit 2), not on the worker.
    check_context(plan_dockerfile(args.dockerfile, context=args.context, name=args.name))
    if args.api_url is not None:
        _check_api_url_option(args.api_url)
    build_id = await submit(
        args.dockerfile,
        store=store,
        context=args.context,
        api_url=args.api_url,
        name=args.name,
        **build_options(args),
    )
    print(json.dumps({"id": build_id}) if args.json else build_id)
    return EXIT_OK


def _check_api_url_option(url: str) -> None:
    """A malformed --api-url (or one with credentials in it) is a usage error: exit 2."""
    from kiln.api import check_api_url

    try:
        check_api_url(url)
    except ConfigError as error:
        raise UsageError(str(error), hint=error.hint) from None


# -- worker -------------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace, store: Store) -> int:
    from kiln.api import ApiSettings
    from kiln.builds import Worker, WorkerConfig

    # Checked before anything starts: without credentials every claimed build would fail.
    ApiSettings.from_env()
    defaults = WorkerConfig()
    config = WorkerConfig(
        concurrency=args.concurrency,
        lease_s=args.lease_s or defaults.lease_s,
        renew_every_s=args.heartbeat_s or defaults.renew_every_s,
        retention_s=args.retention_days * DAY_S if args.retention_days else defaults.retention_s,
        poll_s=args.poll_s or defaults.poll_s,
        worker_id=args.worker_id,
    )
    if config.renew_every_s >= config.lease_s:
        raise UsageError(
            f"--heartbeat-s ({config.renew_every_s}) must be shorter than --lease-s"
            f" ({config.lease_s})",
            hint="renew at a third of the lease, so two missed heartbeats are survived",
        )
    _log_json()
    worker = Worker(store, config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.drain)
    try:
        await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


def _log_json() -> None:
    """structlog as JSON lines on stderr, one object per event, for a log collector."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
