"""How ``kiln`` and its commands print their help.

Every option that takes a value says its default: where the help text does not already say it
(``(default: ...)`` written out, because "derived from the Dockerfile" says more than ``None``),
the value is appended, as argparse's ArgumentDefaultsHelpFormatter would. A paragraph written
with line breaks (an example table) is printed as written; a one-line paragraph is wrapped.
"""

from __future__ import annotations

import argparse

# The word a help text uses to state an option's default; a test holds every option to it.
DEFAULT_WORD = "default"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with defaults shown and pre-formatted paragraphs kept."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if DEFAULT_WORD in text or not _shows_default(action):
            return action.help
        return f"{text} ({DEFAULT_WORD}: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(
            paragraph if "\n" in paragraph else fill(paragraph, width, indent)
            for paragraph in text.split("\n\n")
        )


def _shows_default(action: argparse.Action) -> bool:
    """Whether appending the default says something: an option taking a value that has one."""
    return (
        bool(action.option_strings)
        and action.nargs != 0
        and action.default is not None
        and action.default is not argparse.SUPPRESS
        and action.default != []
    )
