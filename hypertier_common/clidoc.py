"""Shell completion and man pages, generated from an agent's argparse tree.

The same tree that parses the command line writes its bash completion and its
man page, so neither can drift from the options the program accepts::

    python -m hypertier_common.clidoc bash agent_host.cli:build_parser
    python -m hypertier_common.clidoc man agent_host.cli:build_parser

``packaging/completion/`` and ``packaging/man/`` hold the generated files; a
test regenerates them and fails if they are stale. Completion is static (no
Python runs on TAB): subcommands, options, an option's choices, and file
names for options and arguments that take a path.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["bash_completion", "main", "man_page"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with the words that reach it, parents first."""
    yield path, parser
    for name, sub in _subparsers(parser).items():
        yield from _walk(sub, (*path, name))


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings and a.help is not argparse.SUPPRESS
    ]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def _takes_path(action: argparse.Action) -> bool:
    return action.type is Path or (action.metavar or "") in ("FILE", "PATH")


# -- bash ------------------------------------------------------------------------


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser.prog`` (``complete -F``)."""
    prog = parser.prog
    func = "_" + re.sub(r"\W", "_", prog)
    cases: list[str] = []
    for path, sub in _walk(parser):
        key = " ".join(path)
        words = [*_subparsers(sub)]
        for action in _options(sub):
            words += action.option_strings
        value_cases: list[str] = []
        for action in _options(sub):
            if action.nargs == 0:
                continue
            flags = "|".join(action.option_strings)
            if action.choices:
                choices = " ".join(str(c) for c in action.choices)
                value_cases.append(
                    f'{flags}) COMPREPLY=($(compgen -W "{choices}" -- "$cur"))'
                    "; return ;;"
                )
            elif _takes_path(action):
                value_cases.append(
                    f'{flags}) COMPREPLY=($(compgen -f -- "$cur")); return ;;'
                )
            else:
                value_cases.append(f"{flags}) return ;;")
        files = any(_takes_path(a) for a in _positionals(sub))
        body = [f'        "{key}")']
        if value_cases:
            body.append('            case "$prev" in')
            body += [f"                {c}" for c in value_cases]
            body.append("            esac")
        body.append(f'            words="{" ".join(words)}"')
        if files:
            body.append(
                '            [[ $cur != -* ]] && COMPREPLY=($(compgen -f -- "$cur"))'
            )
        body.append("            ;;")
        cases.append("\n".join(body))
    step = '            "{}") path="${{path:+$path }}$w" ;;'
    steps = "\n".join(step.format(p) for p in _command_paths(parser))
    return f"""# bash completion for {prog}; generated from its argparse tree by
# hypertier_common.clidoc: do not edit.
{func}() {{
    local cur prev path="" w words=""
    cur=${{COMP_WORDS[COMP_CWORD]}}
    prev=${{COMP_WORDS[COMP_CWORD-1]}}
    # The subcommand path so far: words that name a subcommand of the path before.
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "${{path:+$path }}$w" in
{steps}
        esac
    done
    case "$path" in
{chr(10).join(cases)}
    esac
    COMPREPLY+=($(compgen -W "$words" -- "$cur"))
}}
complete -F {func} {prog}
"""


def _command_paths(parser: argparse.ArgumentParser) -> list[str]:
    return [" ".join(p) for p, _ in _walk(parser) if p]


# -- man -------------------------------------------------------------------------


def _roff(text: str) -> str:
    """Escape ``text`` for roff: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line
        for line in text.splitlines()
    )


_GLOBAL = ("help", "verbose", "quiet", "log_format")


def _option_lines(parser: argparse.ArgumentParser, local: bool = False) -> list[str]:
    """``.TP`` items of ``parser``'s options (``local``: not the global ones)."""
    out: list[str] = []
    for action in _options(parser) + _positionals(parser):
        if local and action.dest.startswith(_GLOBAL):
            continue
        if action.option_strings:
            flags = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
            if action.nargs != 0:
                meta = action.metavar or (
                    "{" + ",".join(map(str, action.choices)) + "}"
                    if action.choices
                    else action.dest.upper()
                )
                flags += f" \\fI{_roff(str(meta))}\\fR"
        else:
            flags = f"\\fI{_roff(str(action.metavar or action.dest))}\\fR"
        out += [".TP", flags, _roff(action.help or "")]
    return out


def man_page(parser: argparse.ArgumentParser, section: int = 8) -> str:
    """The man page of ``parser.prog`` (roff, man(7) macros)."""
    prog = parser.prog
    lines = [
        '.\\" generated from the argparse tree by hypertier_common.clidoc: do not edit',
        f'.TH {prog.upper()} {section} "" "HyperTier" "HyperTier manual"',
        ".SH NAME",
        f"{prog} \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
        f"\\fB{prog}\\fR [\\fIOPTION\\fR]... \\fICOMMAND\\fR [\\fIARG\\fR]...",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        "Options \\fB\\-v\\fR, \\fB\\-q\\fR and "
        "\\fB\\-\\-log\\-format\\fR are accepted before and after the command.",
        ".SH OPTIONS",
        *_option_lines(parser),
        ".SH COMMANDS",
    ]
    for path, sub in _walk(parser):
        if not path or _subparsers(sub):
            continue
        parent = dict(_walk(parser))[path[:-1]]
        usage = sub.format_usage().removeprefix("usage: ").strip()
        lines += [
            ".SS " + _roff(" ".join(path)),
            _roff(_help_of(parent, path[-1]) or sub.description or ""),
            ".PP",
            ".nf",
            _roff(usage),
            ".fi",
            *_option_lines(sub, local=True),
        ]
        if sub.epilog:
            lines += [".PP", ".nf", _roff(sub.epilog.strip()), ".fi"]
    lines += [
        ".SH EXIT STATUS",
        ".TP\n0\nsuccess",
        ".TP\n1\nruntime failure (and bugs, logged with a traceback)",
        ".TP\n2\nusage or configuration error",
        ".TP\n3\n\\fBstatus\\fR: no daemon is running "
        f"(see \\fBsystemctl status {prog}\\fR)",
    ]
    if parser.epilog:
        lines += [".SH EXAMPLES", ".nf", _roff(parser.epilog.strip()), ".fi"]
    lines += [
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1); docs/operations.md, "
        "docs/host.md, docs/guest.md and docs/wire-protocol.md in the source.",
    ]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------

_FORMATS: dict[str, Callable[[argparse.ArgumentParser], str]] = {
    "bash": bash_completion,
    "man": man_page,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hypertier_common.clidoc {bash,man} MODULE:FUNCTION``."""
    cli = argparse.ArgumentParser(
        prog="python -m hypertier_common.clidoc",
        description="Write the bash completion or the man page of a command.",
        epilog="examples:\n"
        "  python -m hypertier_common.clidoc bash agent_host.cli:build_parser\n"
        "  python -m hypertier_common.clidoc man agent_guest.cli:build_parser\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_argument("format", choices=sorted(_FORMATS))
    cli.add_argument("factory", help="MODULE:FUNCTION returning the ArgumentParser")
    args = cli.parse_args(argv)
    module, _, name = args.factory.partition(":")
    parser = getattr(importlib.import_module(module), name)()
    sys.stdout.write(_FORMATS[args.format](parser))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
