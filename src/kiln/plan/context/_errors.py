"""The context errors, each naming the path and what to do about it."""

from __future__ import annotations

from kiln.errors import ContextError


def vanished(rel: str) -> ContextError:
    return ContextError(
        f"{rel} disappeared from the build context while it was being archived",
        hint="stop whatever is changing the context during the build, or exclude that path in "
        ".dockerignore",
    )


def unreadable(rel: str, exc: OSError | None) -> ContextError:
    reason = exc.strerror if exc is not None and exc.strerror else "permission denied"
    return ContextError(
        f"cannot read {rel} in the build context: {reason}",
        hint="make it readable by the user running kiln, or exclude it in .dockerignore",
    )


def changed(rel: str, what: str) -> ContextError:
    return ContextError(
        f"{rel} changed while the build context was being archived: {what}",
        hint="stop whatever writes to the context during the build (or exclude that path in "
        ".dockerignore), then retry",
    )


def collision(path: str, other: str) -> ContextError:
    return ContextError(
        f"extra context file {path!r} collides with {other} in the build context",
        hint="give the extra file another path, or exclude the clashing path in .dockerignore",
    )
