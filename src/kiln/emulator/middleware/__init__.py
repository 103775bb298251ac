"""The emulator's network: injected faults, a request log and a latency/bandwidth model.

``wrap_app`` puts any ASGI app behind it; ``_faults``, ``_pacing`` and ``_request_log`` each do
one of those jobs and ``_network`` wires them into one ASGI middleware. See ``_network`` for the
``/_emulator/faults`` and ``/_emulator/requests`` endpoints it serves itself.
"""

from kiln.emulator.middleware._faults import FaultRule, FaultRules, SseCutter, parse_rule
from kiln.emulator.middleware._network import wrap_app
from kiln.emulator.middleware._pacing import TokenBucket
from kiln.emulator.middleware._request_log import RequestLog, safe_query, sandbox_of

__all__ = [
    "FaultRule",
    "FaultRules",
    "RequestLog",
    "SseCutter",
    "TokenBucket",
    "parse_rule",
    "safe_query",
    "sandbox_of",
    "wrap_app",
]
