"""Split a rationale into its three steps and flag answers that do not follow the structure."""

from __future__ import annotations

import re
from dataclasses import dataclass

# "Step 1:", "**Step 1**", "STEP 1 -", "Step 1." at the start of a line.
_STEP = re.compile(r"^[\s#>*_-]*step\s*([123])\s*[:.)\-–]*\**\s*", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Parsed:
    step1: str
    step2: str
    step3: str
    ok: bool  # all three steps present, in order, non-empty
    problem: str = ""


def parse(text: str) -> Parsed:
    """Steps are found by their markers; text before 'Step 1' is ignored. Missing steps are empty strings."""
    text = (text or "").strip()
    if not text:
        return Parsed("", "", "", False, "empty rationale")
    marks = [(int(m.group(1)), m.start(), m.end()) for m in _STEP.finditer(text)]
    # Keep the first occurrence of each step number, in order of appearance.
    seen: dict[int, tuple[int, int]] = {}
    for n, s, e in marks:
        seen.setdefault(n, (s, e))
    order = sorted(seen.items(), key=lambda kv: kv[1][0])
    steps = {1: "", 2: "", 3: ""}
    for idx, (n, (_, e)) in enumerate(order):
        end = order[idx + 1][1][0] if idx + 1 < len(order) else len(text)
        steps[n] = text[e:end].strip()
    if not order:
        return Parsed(text, "", "", False, "no 'Step N' markers")
    problem = ""
    if [n for n, _ in order] != [1, 2, 3]:
        problem = f"steps found in order {[n for n, _ in order]}, expected [1, 2, 3]"
    elif not all(steps.values()):
        problem = "a step is empty"
    return Parsed(steps[1], steps[2], steps[3], not problem, problem)
