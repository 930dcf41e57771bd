"""The shell commands of a Markdown page, in order, as a reader would paste them: ```bash blocks, continuation
lines joined, heredoc bodies set aside, `for VAR in WORDS; do ...; done` unrolled, `if`/`then`/`fi` dropped, and
each pipeline or list split into simple commands (argv lists). Variables are kept as written; `expand` resolves
the ones assigned earlier on the page."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

FENCE = re.compile(r"^\s*```bash\s*$")
HEREDOC = re.compile(r"<<-?\s*'?\"?([A-Za-z_]+)'?\"?")
VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
OPERATORS = {";", "&&", "||", "|", "&"}


@dataclass
class Command:
    argv: list[str]
    line: str                                   # the logical line it came from (loops unrolled)
    block: int                                  # index of its ```bash block
    heredoc: str = ""                           # the body fed on stdin, if any
    assigns: dict[str, str] = field(default_factory=dict)


def bash_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines():
        if current is None:
            if FENCE.match(line):
                current, indent = [], len(line) - len(line.lstrip())
        elif line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        else:
            current.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def _logical_lines(block: str) -> list[tuple[str, str]]:
    """(line, heredoc body) pairs: continuations joined, heredoc bodies attached to their line."""
    out: list[tuple[str, str]] = []
    lines = block.splitlines()
    i, pending = 0, ""
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        body = ""
        tag = HEREDOC.search(line)
        if tag:
            body_lines = []
            while i < len(lines) and lines[i].strip() != tag.group(1):
                body_lines.append(lines[i])
                i += 1
            i += 1
            body = "\n".join(body_lines)
            line = HEREDOC.sub("", line)
        if line.strip():
            out.append((line, body))
    return out


def _unroll(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line, body = lines[i]
        loop = re.match(r"^\s*for (\w+) in (.+?); do\s*$", line)
        if not loop:
            out.append((line, body))
            i += 1
            continue
        depth, j = 1, i + 1
        while depth:
            if re.match(r"^\s*for .*; do\s*$", lines[j][0]):
                depth += 1
            if lines[j][0].strip() == "done":
                depth -= 1
            j += 1
        inner = _unroll(lines[i + 1:j - 1])
        for word in shlex.split(loop.group(2)):
            pattern = re.compile(r"\$(\{" + loop.group(1) + r"\}|" + loop.group(1) + r"\b)")
            out += [(pattern.sub(word, text), b) for text, b in inner]
        i = j
    return out


def _split(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for argv in commands:
        while argv and argv[0] in ("if", "then", "fi", "else", "!"):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def commands(text: str) -> list[Command]:
    out: list[Command] = []
    for index, block in enumerate(bash_blocks(text)):
        for line, body in _unroll(_logical_lines(block)):
            for argv in _split(line):
                assigns = {}
                words = argv[1:] if argv[0] == "export" else argv
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    name, _, value = words[0].partition("=")
                    assigns[name] = value
                    words = words[1:]
                if argv[0] == "read":  # `read -rsp PROMPT NAME`: NAME is set from what the user types
                    assigns = {w: "" for w in argv[1:] if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", w)}
                out.append(Command(argv=words if assigns else argv, line=line, block=index, heredoc=body,
                                   assigns=assigns))
    return out


def variables_used(line: str) -> set[str]:
    """$VAR references outside single quotes (bash expands nothing there)."""
    unquoted = re.sub(r"'[^']*'", "", line)
    return {a or b for a, b in VAR.findall(unquoted)}


def expand(word: str, env: dict[str, str], depth: int = 0) -> str:
    if depth > 5:
        return word
    return VAR.sub(lambda m: expand(env.get(m.group(1) or m.group(2), m.group(0)), env, depth + 1), word)


def option(argv: list[str], *names: str) -> str | None:
    """The value of the last `--name VALUE` / `--name=VALUE` / `-n VALUE` among names."""
    found = None
    for i, word in enumerate(argv):
        for name in names:
            if word == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif word.startswith(name + "=") and name.startswith("--"):
                found = word.split("=", 1)[1]
    return found


def substitutions(word: str) -> list[str]:
    """The command texts inside $( ... ) in a word, outermost first."""
    out, i = [], 0
    while (start := word.find("$(", i)) != -1:
        depth, j = 1, start + 2
        while j < len(word) and depth:
            depth += {"(": 1, ")": -1}.get(word[j], 0)
            j += 1
        inner = word[start + 2:j - 1]
        out += [inner] + substitutions(inner)
        i = j
    return out


def all_argvs(cmds: list[Command]) -> list[tuple[int, list[str]]]:
    """(position, argv) of every simple command, including those inside $( ... ) in arguments and assignments."""
    out = []
    for pos, c in enumerate(cmds):
        out.append((pos, c.argv))
        for word in c.argv + list(c.assigns.values()):
            for inner in substitutions(word):
                out += [(pos, argv) for argv in _split(inner)]
    return [(pos, argv) for pos, argv in out if argv]
