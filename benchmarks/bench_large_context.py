"""Benchmark 2: a large build context (5,000 files, ~300 MB) over a 25 ms, 200 Mbit/s link.

The context is generated once (deterministically) and reused: 80 % of the files are text
(source-like lines, compressible), 20 % incompressible random bytes, which carry most of the
volume. The context phase runs from the start of archiving to the archive extracted remotely
(both clients report those moments in the same status messages); CPU time is this process's,
the emulator running in its own.
"""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    CLIENTS,
    CONTEXT_END,
    CONTEXT_START,
    Timeline,
    cpu_seconds,
    emulator,
    interleaved,
    median,
    parse_args,
    print_table,
    request_log,
    write_results,
)

FILES = 5000
TOTAL_MB = 300
TEXT_SHARE = 0.8  # of the files; the rest are binary
BINARY_VOLUME_SHARE = 0.75  # of the bytes
LATENCY_MS = 25
BANDWIDTH_MBPS = 200.0
REPS = 3
TINY = {"files": 40, "total_mb": 2, "reps": 1, "bandwidth_mbps": None}
SEED = 7
TARGET_RATIO = 0.6
FILES_PER_DIR = 100
MB = 1 << 20
# context.tar.gz, or context-N.tar.gz when kiln sends a large context in parts.
_ARCHIVE_PATH = re.compile(r"context(-\d+)?\.tar\.gz$")

_WORDS = [
    "def",
    "class",
    "return",
    "import",
    "from",
    "self",
    "value",
    "result",
    "build",
    "image",
    "context",
    "layer",
    "sandbox",
    "archive",
    "stream",
    "upload",
    "extract",
    "token",
    "request",
    "response",
    "state",
    "machine",
    "driver",
    "handler",
]
_SIZES = re.compile(r"Build context: (\d+) files, (.+) uncompressed, (.+) compressed")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def generate_context(files: int, total_mb: int) -> Path:
    """The context directory, generated once per size under the temp dir and then reused."""
    root = Path(tempfile.gettempdir()) / f"kiln-bench-context-{files}-{total_mb}mb"
    dockerfile = root / "Dockerfile"
    if dockerfile.exists():
        return dockerfile
    rng = random.Random(SEED)
    text_files = int(files * TEXT_SHARE)
    binary_files = files - text_files
    total = total_mb * MB
    text_size = int(total * (1 - BINARY_VOLUME_SHARE)) // max(1, text_files)
    binary_size = int(total * BINARY_VOLUME_SHARE) // max(1, binary_files)
    for index in range(files):
        folder = root / "src" / f"d{index // FILES_PER_DIR:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if index < text_files:
            (folder / f"f{index:05d}.py").write_text(_text(rng, text_size))
        else:
            (folder / f"f{index:05d}.bin").write_bytes(rng.randbytes(binary_size))
    # Written last: its presence means the generation finished.
    dockerfile.write_text("FROM python:3.12-slim\nWORKDIR /app\nCOPY . /app\n")
    return dockerfile


def _text(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(_WORDS, k=rng.randint(3, 12))) + f" = {rng.randint(0, 9999)}\n"
        lines.append(line)
        length += len(line)
    return "".join(lines)


def _bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * _UNITS[unit]


def _context_breakdown(timeline: Timeline, requests: list[dict[str, Any]]) -> dict[str, float]:
    """The context phase in three parts, from the emulator's log of the archive PUTs: before the
    first (archiving, for a client that archives first), from the first to the end of the last
    (the upload; kiln extracts earlier parts meanwhile), and after it (the rest of the remote
    extraction and the archives' removal)."""
    puts = [
        r
        for r in requests
        if r["method"] == "PUT" and _ARCHIVE_PATH.search(str(r["query"].get("path", "")))
    ]
    first = min(r["time"] for r in puts)
    last_end = max(r["time"] + r["duration_ms"] / 1000 for r in puts)
    return {
        "before_upload_s": first - timeline.epochs[CONTEXT_START],
        "upload_s": last_end - first,
        "after_upload_s": timeline.epochs[CONTEXT_END] - last_end,
        "archives": len(puts),
    }


def measure(files: int, total_mb: int, reps: int, bandwidth_mbps: float | None) -> dict[str, Any]:
    dockerfile = generate_context(files, total_mb)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    with emulator(latency_ms=LATENCY_MS, bandwidth_mbps=bandwidth_mbps) as emu:
        url = emu.url
        for _rep, name in interleaved(reps):
            cpu_before, logged = cpu_seconds(), len(request_log(url))
            timeline = CLIENTS[name](url, dockerfile)
            sizes = _SIZES.search(timeline.context_summary)
            assert sizes is not None, timeline.context_summary
            runs[name].append(
                {
                    "context_s": timeline.context_s(),
                    **_context_breakdown(timeline, request_log(url)[logged:]),
                    "build_s": timeline.marks["end"] - timeline.started,
                    "cpu_s": cpu_seconds() - cpu_before,
                    "uncompressed_bytes": _bytes(sizes.group(2)),
                    "compressed_bytes": _bytes(sizes.group(3)),
                }
            )
    summary = {name: _summarise(values) for name, values in runs.items()}
    return {
        "files": files,
        "total_mb": total_mb,
        "latency_ms": LATENCY_MS,
        "bandwidth_mbps": bandwidth_mbps,
        "reps": reps,
        "runs": runs,
        "summary": summary,
        "context_ratio": summary["kiln"]["context_s"] / summary["official"]["context_s"],
        "build_ratio": summary["kiln"]["build_s"] / summary["official"]["build_s"],
    }


def _summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    summary = {key: median([run[key] for run in runs]) for key in runs[0]}
    summary["compression_ratio"] = summary["uncompressed_bytes"] / summary["compressed_bytes"]
    return summary


def main() -> None:
    args = parse_args(__doc__ or "")
    sizes: dict[str, Any] = (
        TINY
        if args.tiny
        else {"files": FILES, "total_mb": TOTAL_MB, "reps": REPS, "bandwidth_mbps": BANDWIDTH_MBPS}
    )
    result = measure(**sizes)
    summary = result["summary"]
    rows = [
        (
            name,
            s["context_s"],
            s["before_upload_s"],
            s["upload_s"],
            s["after_upload_s"],
            s["archives"],
            s["build_s"],
            s["cpu_s"],
            s["uncompressed_bytes"] / MB,
            s["compressed_bytes"] / MB,
            s["compression_ratio"],
        )
        for name, s in summary.items()
    ]
    rows.append(
        ("kiln/official", result["context_ratio"], None, None, None, None, result["build_ratio"])
        + (None,) * 4
    )
    text = print_table(
        [
            "client",
            "context s",
            "archive before upload s",
            "upload s",
            "extraction after upload s",
            "archives",
            "build s",
            "CPU s",
            "MiB in",
            "MiB sent",
            "compression",
        ],
        rows,
    )
    met = result["context_ratio"] <= TARGET_RATIO and result["build_ratio"] <= TARGET_RATIO
    print(
        f"kiln/official: context {result['context_ratio']:.2f}, build {result['build_ratio']:.2f}"
        f" (target <= {TARGET_RATIO}): {'met' if met else 'MISSED'}"
    )
    write_results(
        "large_context",
        {
            "tiny": args.tiny,
            **result,
            "table": text,
            "target": {"ratio": TARGET_RATIO, "met": met},
        },
    )


if __name__ == "__main__":
    main()
