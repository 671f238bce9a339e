"""Prompts built from a user's history, shared by the teacher, distillation and student inference.

Templates are data: the defaults below are the paper's (zero-shot chain of thought, three steps), and every
stage config may replace them. A prompt only ever sees the rationale prefix, item_ids[:-3]: not the validation
and test targets (item_ids[-2:]), and not the last training target item_ids[-3] either. That last one is what lets
SLIM train its rationale fusion without look-ahead: the recommender fuses a user's rationale only into predictions
of targets after the prefix it was written from (item_ids[-3] in training, item_ids[-2] and [-1] in evaluation);
with a rationale written from item_ids[:-2], every training target would already be named in the text the user
side sees (slim.recsys.data.rationale_positions).
"""

from __future__ import annotations

from dataclasses import dataclass

TEACHER_SYSTEM = "You are a helpful shopping assistant who reasons step by step."

# The paper's zero-shot CoT prompt for the teacher (SLIM, Sec. 3.1), in our words.
TEACHER_TEMPLATE = (
    "A user bought the following items, oldest first:\n{history}\n\n"
    "Think step by step and answer in exactly three steps.\n"
    "Step 1: Summarize the user's preferences from the items above.\n"
    "Step 2: Based on the preferences, recommend 5 categories or brands the user may like.\n"
    "Step 3: Under each of the 5 categories or brands, recommend 5 specific products.\n"
    "Start the three parts with 'Step 1:', 'Step 2:' and 'Step 3:'."
)

# The simplified student prompt (SLIM, Sec. 3.2): the student learns the steps, so the prompt need not spell them out.
STUDENT_TEMPLATE = (
    "A user bought the following items, oldest first:\n{history}\n\n"
    "Summarize the user's preferences, recommend categories or brands, and products under each, step by step."
)


@dataclass(frozen=True)
class Example:
    """One worked example shown to the teacher before the real user (few-shot): a history as the prompt lists it
    ("1. title\n2. title ...") and the answer to imitate (free text, or JSON under slim.text.rationale.SCHEMA when the
    teacher is structured)."""

    history: str
    answer: str


@dataclass(frozen=True)
class PromptConfig:
    """Embedded in the teacher, distill and student configs under `prompt:`."""

    teacher_system: str = TEACHER_SYSTEM  # the teacher's system message
    teacher_template: str = TEACHER_TEMPLATE  # the paper's zero-shot CoT prompt; {history} is the titled prefix
    teacher_examples: tuple[Example, ...] = ()  # few-shot turns before the user's; the paper's prompt is zero-shot
    student_template: str = STUDENT_TEMPLATE  # the student's prompt (distill and student stages alike)
    max_history_items: int = 20  # most recent items of the training prefix
    max_title_chars: int = 120  # longer item titles are cut in prompts


# Items held back from every rationale prompt: the test and validation targets and the last training target.
HISTORY_CUT = 3


def training_prefix(item_ids, cut: int = HISTORY_CUT) -> list[int]:
    """The items a rationale may see: item_ids[:-HISTORY_CUT] (see the module docstring for why 3, not 2). Serving
    passes cut=0: a new user's history sent to the server holds no held-out target, all of it is the past."""
    items = list(item_ids)
    return items[: max(len(items) - cut, 0)]


def history_text(item_ids, item_text: dict[int, str], pc: PromptConfig, cut: int = HISTORY_CUT) -> str:
    """Numbered lines of item text for the most recent `max_history_items` items of the training prefix."""
    recent = training_prefix(item_ids, cut)[-pc.max_history_items :]
    lines = []
    for n, i in enumerate(recent, 1):
        text = item_text.get(int(i), f"item {int(i)}")
        lines.append(f"{n}. {text[: pc.max_title_chars]}")
    return "\n".join(lines)


def teacher_messages(item_ids, item_text: dict[int, str], pc: PromptConfig) -> list[dict]:
    """OpenAI chat messages for the teacher: system, the few-shot examples as earlier turns, the user's history."""
    shots = []
    for ex in pc.teacher_examples:
        shots += [{"role": "user", "content": pc.teacher_template.format(history=ex.history)},
                  {"role": "assistant", "content": ex.answer}]
    user = pc.teacher_template.format(history=history_text(item_ids, item_text, pc))
    return [{"role": "system", "content": pc.teacher_system}, *shots, {"role": "user", "content": user}]


def teacher_prompt_key(messages: list[dict]) -> str:
    """What a teacher row records as its prompt, and what decides whether a stored answer still fits: the user
    turn (zero-shot, as rows have always been keyed), or every turn after the system's when there are examples,
    so that changing the examples asks again."""
    import json

    return messages[-1]["content"] if len(messages) <= 2 else json.dumps(messages[1:], ensure_ascii=False)


def student_prompt(item_ids, item_text: dict[int, str], pc: PromptConfig, cut: int = HISTORY_CUT) -> str:
    """The user turn of the student's chat; the chat template of the base model is applied by the caller."""
    return pc.student_template.format(history=history_text(item_ids, item_text, pc, cut))


def student_chat_text(tokenizer, item_ids, item_text: dict[int, str], pc: PromptConfig, cut: int = HISTORY_CUT) -> str:
    """The exact prompt text the student sees in distillation and inference: the user turn in the base model's chat
    template, ending with the assistant header (add_generation_prompt=True), so generation starts the answer."""
    messages = [{"role": "user", "content": student_prompt(item_ids, item_text, pc, cut)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
