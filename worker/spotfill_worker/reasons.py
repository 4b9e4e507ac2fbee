"""Why something failed, in one line a person reads: what error records, reports and summaries quote.

An exception's text is often many lines: TensorFlow's errors from a compiled function start with "Graph
execution error:", then list the Python frames that defined the failing node, and only then say what went
wrong (``indices[0,0] = 50 is not in [0, 10)``), with the node and op in brackets after it. The reason is the
error's type and its first line that says something, without those frames and brackets.
"""

from __future__ import annotations

import re

REASON_CHARS = 300
# Lines that introduce or locate a failure without saying what it is.
_FRAME_LINES = re.compile(
    r"^(Graph execution error:|Detected at node .* defined at|Detected unsupported operations|File \"|"
    r"Traceback \(most recent call last\)|During handling of the above exception|\[\[\{\{node )"
)
_LOCATORS = re.compile(r"\s*(\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\])")


def one_line(exc: BaseException) -> str:
    """``<ErrorType>: <what went wrong>``, one line of printable ASCII, at most REASON_CHARS characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    saying = [line for line in lines if not _FRAME_LINES.match(line)]
    text = _LOCATORS.sub("", (saying or lines or [""])[0]).strip()
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    reason = reason.encode("ascii", "replace").decode()
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."
