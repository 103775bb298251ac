"""The build context: walked with Docker's rules, streamed as a deterministic tar.gz.

Choices, and why:

- **What is sent.** Whatever ``docker build`` would send: `.dockerignore` with moby's semantics
  (:mod:`kiln.plan.dockerignore`); the Dockerfile (when it lies inside the context) and
  `.dockerignore` are always sent, even when a pattern excludes them.
- **Symlinks stay symlinks.** A link is archived as a link and never followed, so a link to
  ``/etc/passwd`` uploads a path, not the file. Sockets, devices and FIFOs cannot be archived and
  are skipped with a warning. Hard links are archived as independent regular files.
- **Directories get entries**, so empty directories and directory modes survive the remote
  ``tar -x``. An excluded directory still gets one when something beneath it is re-included.
- **Deterministic bytes.** Entries sorted by path, GNU headers, uid/gid 0, no user or group
  names, mtime 0, modes kept (``& 0o7777``); gzip header with mtime 0 and no file name. The
  uncompressed digest therefore depends on paths, modes, link targets and contents only, which is
  what the resume logic compares.
- **Bounded memory.** Files are read in pieces and compressed on the way; the stream is cut into
  chunks of at most ``chunk_size`` bytes. Nothing holds the whole archive.
- **Fast.** One gzip member at level 1, compressed in 1 MiB blocks on a few threads (pigz's
  scheme, see :mod:`._gzip`); the bytes do not depend on the number of threads.

The modules each do one of those jobs: ``_walk`` (what is sent), ``_read`` (reading it safely),
``_tar`` (framing), ``_gzip`` (compression), ``_handoff`` (the thread that feeds the event loop),
``_progress``; ``_archive`` puts them together as :class:`ContextArchive`.
"""

from kiln.plan.context._archive import (
    DEFAULT_CHUNK_SIZE,
    ContextArchive,
    ContextSummary,
    summarize_context,
)
from kiln.plan.context._entries import ContextEntry, EntryKind, ExtraFile

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ContextArchive",
    "ContextEntry",
    "ContextSummary",
    "EntryKind",
    "ExtraFile",
    "summarize_context",
]
