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
    """Steps are found by their markers; text before 'Step 1' is ignored. Missing steps are empty strings. A JSON
    answer (structured generation, SCHEMA) is read as its three parts."""
    structured = parse_json(text)
    if structured is not None:
        return structured
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


# The three steps as JSON (structured generation: the teacher through response_format, the student through vLLM's
# structured outputs). Lengths are bounded so that a schema-following answer fits a few hundred tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "preferences": {"type": "string", "maxLength": 400},
        "categories": {
            "type": "array", "minItems": 1, "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 60},
                               "products": {"type": "array", "minItems": 1, "maxItems": 5,
                                            "items": {"type": "string", "maxLength": 80}}},
                "required": ["name", "products"], "additionalProperties": False,
            },
        },
    },
    "required": ["preferences", "categories"], "additionalProperties": False,
}


def parse_json(text: str) -> Parsed | None:
    """A structured answer (SCHEMA) -> the same three steps as free text: step 2 lists the categories, step 3 the
    products under each ("name: a, b, c" per line). None when `text` is no JSON object; a JSON object that does
    not follow the schema is a malformed answer."""
    import json

    t = (text or "").strip()
    if not t.startswith("{"):
        return None
    try:
        obj = json.loads(t)
    except ValueError:
        return Parsed("", "", "", False, "unparsable JSON (cut off at max_tokens?)")
    cats = obj.get("categories") if isinstance(obj, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) for c in cats):
        return Parsed("", "", "", False, "JSON without a list of categories")
    s1 = str(obj.get("preferences") or "").strip()
    names = [str(c.get("name") or "").strip() for c in cats]
    s2 = "\n".join(f"{k}. {n}" for k, n in enumerate(names, 1) if n)
    s3 = "\n".join(f"{n}: " + ", ".join(str(p).strip() for p in c.get("products") or [] if str(p).strip())
                   for n, c in zip(names, cats) if c.get("products"))
    problem = "" if s1 and s2 and s3 else "a step is empty"
    return Parsed(s1, s2, s3, not problem, problem)


def render(p: Parsed) -> str:
    """Steps as the free-text layout the encoder and the prompts use."""
    return f"Step 1: {p.step1}\nStep 2: {p.step2}\nStep 3: {p.step3}"


def to_json(p: Parsed) -> str:
    """Parsed steps -> a SCHEMA answer (the structured distillation target): categories and their products from
    step 3's "name: a, b" lines, else the names listed in step 2."""
    import json

    cats = []
    for line in p.step3.splitlines():
        name, sep, rest = line.partition(":")
        if sep:
            cats.append({"name": re.sub(r"^\s*\d+[.)]\s*", "", name).strip(),
                         "products": [x.strip() for x in re.split(r"[,;]", rest) if x.strip()][:5]})
    if not cats:
        cats = [{"name": re.sub(r"^\s*\d+[.)]\s*", "", n).strip(), "products": []}
                for n in p.step2.splitlines() if n.strip()]
    return json.dumps({"preferences": p.step1, "categories": cats[:5]}, ensure_ascii=False)
