"""`kiln plan`: show what a build would do, without any network access."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kiln.builds import build_key, build_options, option_keywords
from kiln.cli._common import add_result_options
from kiln.cli._source import add_source_arguments, plan_from_arguments
from kiln.errors import UsageError
from kiln.plan import BuildPlan, plan_import, summarize_context
from kiln.plan.sizing import format_bytes


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `kiln plan` to `sub`."""
    parser = sub.add_parser(
        "plan",
        help="show the build plan for a Dockerfile or an image import (no network)",
        usage="%(prog)s [OPTIONS] [PATH | -] | --import REF",
        description="Parse the Dockerfile, pick the image name and summarise the build context, "
        "printing the warnings a build would print. Nothing is sent anywhere.",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--import",
        dest="import_ref",
        metavar="REF",
        help="plan an image import (default: plan the Dockerfile)",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="the image name to register (default: derived from the Dockerfile or reference)",
    )
    add_result_options(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan and print; errors propagate to the dispatcher, which maps them to exit codes."""
    plan = _plan(args)
    context = None
    # The context's warnings (a FIFO or socket skipped) join the plan's own: with --json,
    # stdout carries the JSON object and nothing else.
    context_warnings: list[str] = []
    if not plan.is_import and plan.context_dir is not None:
        context = summarize_context(
            plan.context_dir, dockerfile=plan.dockerfile_path, on_warning=context_warnings.append
        )
    payload = plan_payload(plan, context)
    options = build_options({kw: getattr(args, kw) for kw in option_keywords(in_key=True)})
    payload["key"] = build_key(plan, options, context.digest if context is not None else None)
    payload["warnings"] += context_warnings
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(_human(payload))
    return 0


def _plan(args: argparse.Namespace) -> BuildPlan:
    if args.import_ref is None:
        return plan_from_arguments(args)
    dockerfile_options = (args.path, args.file, args.context, args.target, args.platform)
    if any(option is not None for option in dockerfile_options) or args.build_args:
        raise UsageError(
            "--import takes no PATH, -f, --context, --build-arg, --target or --platform",
            hint="plan either a Dockerfile or an image import",
        )
    return plan_import(args.import_ref, name=args.name)


def plan_payload(plan: BuildPlan, context: Any | None) -> dict[str, Any]:
    """The `--json` object: exactly the documented keys."""
    return {
        "name": plan.name,
        "base_image": plan.base_image,
        "base_image_is_internal_stage": plan.base_image_is_internal_stage,
        "additional_image_references": list(plan.additional_image_references),
        "unresolvable_image_references": [
            {"line": ref.line, "reference": ref.reference, "reason": ref.reason}
            for ref in plan.unresolvable_image_references
        ],
        "ignored_instructions": [
            {"line": item.line, "keyword": item.keyword} for item in plan.ignored_instructions
        ],
        "import_image_reference": plan.import_image_reference,
        "context": None
        if context is None
        else {
            "dir": context.dir,
            "files": context.files,
            "bytes": context.bytes,
            "digest": context.digest,
        },
        "warnings": list(plan.warnings),
    }


def _human(payload: dict[str, Any]) -> str:
    base = payload["base_image"]
    if payload["base_image_is_internal_stage"]:
        base += " (an earlier stage)"
    lines = [f"Image name:  {payload['name']}"]
    if payload["import_image_reference"] is not None:
        lines.append(f"Import:      {payload['import_image_reference']}")
    lines.append(f"Base image:  {base}")
    extra = payload["additional_image_references"]
    lines.append(f"Also needs:  {', '.join(extra) if extra else '(nothing else)'}")
    context = payload["context"]
    if context is not None:
        lines.append(
            f"Context:     {context['dir']} ({context['files']} files, "
            f"{format_bytes(context['bytes'])})"
        )
    lines.append(f"Build key:   {payload['key']}")
    lines += [f"warning: {warning}" for warning in payload["warnings"]]
    return "\n".join(lines)
