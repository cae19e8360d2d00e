"""Grading one assistant reply against a task: extract the attempt, then check it.

Code (``python_tests``): the reply's fenced code blocks (the whole reply when it has none), each
parsed with ``ast``; a block that does not parse is skipped.  What runs is the problem's preamble
(its imports and helpers), then the reply's top-level imports, functions, classes and assignments
(not its calls, prints, ``if __name__ == "__main__":`` demos or ``input()``), then the tests, in the
sandbox.  The function is the one named ``entry_point``; failing that the last top-level ``def``
(bound to the entry point's name, so a recursive one still calls itself).  A reply without a
function is not an attempt; one whose functions are all in code that does not parse is a failed one.

Answers (``answer``): ``number``: the reply's last number by lm-eval's gsm8k flexible rule (the last
match of ``-?[$0-9.,]{2,}|-?[0-9]+``, then ``,`` and ``$`` removed and a trailing ``.`` cut),
equal to the answer normalised the same way; a reply without a number is not an attempt.
``exact``: the whole reply, stripped, equals the answer.  ``regex``: the answer's pattern is found
in the reply.  Answers are compared in our process: no code of the reply runs.
"""

from __future__ import annotations

import ast
import re

from ..util.errors import UserError
from .sandbox import Sandbox
from .tasks import NUMBER, Task, code_blocks, normalize_number, parse

MAX_REPLY_CHARS = 200_000  # longer replies are graded on their first 200,000 characters
KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _reads_input(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("input", "print", "exit", "quit"):
            return True
        if isinstance(n, ast.Attribute) and n.attr in ("stdin", "argv", "exit"):
            return True
    return False


def extract_program(reply: str, entry_point: str, preamble: str = "") -> str | None:
    """The program a code reply stands for, or None when it holds no function."""
    reply = reply[:MAX_REPLY_CHARS]
    blocks = code_blocks(reply) or [reply]
    kept, defs = [], []
    for block in blocks:
        tree = parse(block)
        if tree is None:
            continue
        for node in tree.body:
            if isinstance(node, KEPT) or (isinstance(node, (ast.Assign, ast.AnnAssign)) and not _reads_input(node)):
                kept.append(ast.get_source_segment(block, node))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defs.append(node.name)
    if not defs:
        return None
    parts = [preamble] if preamble else []
    parts += kept
    if entry_point not in defs:
        parts.append(f"{entry_point} = {defs[-1]}")
    return "\n\n".join(parts) + "\n"


def _unparsed(reply: str) -> dict | None:
    """A reply whose only functions are in code that does not parse: a failed attempt, not none."""
    for block in code_blocks(reply[:MAX_REPLY_CHARS]):
        if re.search(r"^\s*(async\s+)?def\s", block, re.M):
            try:
                ast.parse(block)
            except SyntaxError as exc:
                return {"attempt": True, "passed": False, "status": "failed",
                        "detail": f"SyntaxError: {exc.msg} (line {exc.lineno} of its code)"}
            except ValueError as exc:
                return {"attempt": True, "passed": False, "status": "failed", "detail": f"ValueError: {exc}"}
    return None


def last_number(reply: str) -> str | None:
    found = NUMBER.findall(reply[:MAX_REPLY_CHARS])
    if not found:
        return None
    a, b = found[-1]
    return normalize_number(a or b)


def grade(task: Task, reply: str, sandbox: Sandbox | None) -> dict:
    """``{"attempt": bool, "passed": bool, "status", "detail", "seconds"}`` of one reply; ``status``
    is ``no_attempt``, ``passed``, ``failed``, ``timeout`` or ``killed``; a sandbox that fails to lock
    itself in is a ``UserError`` (the evaluation stops: it is no verdict on the reply)."""
    g = task.grader
    if g.type == "python_tests":
        program = extract_program(reply, g.entry_point, g.preamble)
        if program is None:
            return _unparsed(reply) or {"attempt": False, "passed": False, "status": "no_attempt",
                                        "detail": "no function in the reply"}
        res = sandbox.run(program, g.tests, entry_point=g.entry_point, call_check=g.call_check)
        if res.status == "error":  # the sandbox itself, not the reply: never counted as a failed attempt
            raise UserError(f"the code sandbox failed ({res.detail}); no check ran")
        return {"attempt": True, **res.as_dict()}
    if g.match == "number":
        got = last_number(reply)
        if got is None:
            return {"attempt": False, "passed": False, "status": "no_attempt", "detail": "no number in the reply"}
        ok = got == normalize_number(g.answer)
        detail = f"answered {got}"
    elif g.match == "exact":
        ok = reply.strip() == g.answer
        detail = "the reply is the answer" if ok else "the reply is not the answer"
    else:
        ok = re.search(g.answer, reply[:MAX_REPLY_CHARS]) is not None
        detail = "the pattern is in the reply" if ok else "the pattern is not in the reply"
    return {"attempt": True, "passed": ok, "status": "passed" if ok else "failed", "detail": detail}
