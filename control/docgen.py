"""Man pages and bash completion, generated from the programs' own argparse definitions.

    python -m control.docgen --man DIR --completion FILE

writes DIR/<program>.1 for every pydp program and one bash completion script FILE that serves them all (link it
under each program's name in a bash-completion directory). scripts/setup.sh and scripts/package.sh run it at install
time, so a page never describes options the installed program does not have. ``man -l DIR/pydpctl.1`` reads one.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import shlex
import sys
from pathlib import Path

import pydp

# program -> (module, function that returns its argparse parser)
PROGRAMS = {
    "pydp-dataplane": ("pydp.dataplane", "build_parser"),
    "pydp-control": ("control.daemon", "build_parser"),
    "pydpctl": ("control.cli", "build_parser"),
    "pydp-carp": ("control.carp.cli", "build_parser"),
    "pydp-bootstrap": ("control.bootstrap", "build_parser"),
    "pydp-lab": ("control.lab.cli", "build_parser"),
    "pydp-demo": ("pydp.demo", "build_parser"),
}

SEE_ALSO = ["pydp-dataplane", "pydp-control", "pydpctl", "pydp-carp", "pydp-bootstrap", "pydp-lab"]


def parser_of(program: str) -> argparse.ArgumentParser:
    module, func = PROGRAMS[program]
    return getattr(importlib.import_module(module), func)()


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in definition order, aliases left out."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                out.append((name, helps.get(name, sub.description or ""), sub))
    return out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS]


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


# ---- roff ----

def _roff(text: str) -> str:
    """Plain text as roff: backslashes escaped, hyphens literal, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n"))


def _action_head(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    fmt = parser._get_formatter()
    if not action.option_strings:
        return "\\fI" + _roff(fmt._metavar_formatter(action, action.dest)(1)[0]) + "\\fR"
    names = ", ".join("\\fB" + _roff(o) + "\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    return names + " \\fI" + _roff(fmt._format_args(action, action.dest.upper())) + "\\fR"


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _key(parser: argparse.ArgumentParser, action: argparse.Action) -> tuple:
    return tuple(action.option_strings), _help_text(parser, action)


def _options_section(parser: argparse.ArgumentParser, known: frozenset = frozenset()) -> list[str]:
    """Each option as a tagged paragraph; those a parent command documents already (--help, --db) are left out."""
    out = []
    for action in _options(parser):
        if _key(parser, action) in known or (known and isinstance(action, argparse._HelpAction)):
            continue
        out += [".TP", _action_head(parser, action), _roff(_help_text(parser, action) or "")]
    return out


def _commands(prefix: str, parser: argparse.ArgumentParser, known: frozenset) -> list[str]:
    out = []
    for name, help, sub in _subcommands(parser):
        full = f"{prefix} {name}"
        out += [".SS " + _roff(full), _roff(help), ".PP", ".nf", _roff(_usage(sub)), ".fi"]
        if sub.description and sub.description.rstrip(".").lower() != help.rstrip(".").lower():
            out += [".PP", _roff(sub.description)]
        out += _options_section(sub, known)
        out += _commands(full, sub, known | {_key(sub, a) for a in _options(sub)})
    return out


def manpage(program: str, parser: argparse.ArgumentParser | None = None, date: str | None = None) -> str:
    parser = parser or parser_of(program)
    date = date or datetime.date.today().isoformat()
    desc = (parser.description or "").strip()
    summary = desc.split("\n")[0]
    if summary.lower().startswith(program.lower() + ":"):
        summary = summary[len(program) + 1:].strip()
    summary = summary.split(". ")[0].rstrip(".")          # the first sentence
    out = [f'.\\" generated by control/docgen.py from {program}\'s argparse definition; do not edit',
           f'.TH {program.upper()} 1 "{date}" "pydp {pydp.__version__}" "pydp manual"',
           ".SH NAME", f"{_roff(program)} \\- {_roff(summary)}",
           ".SH SYNOPSIS", ".nf", _roff(_usage(parser)), ".fi",
           ".SH DESCRIPTION", _roff(desc)]
    out += [".SH OPTIONS", *_options_section(parser)]
    commands = _commands(program, parser, frozenset(_key(parser, a) for a in _options(parser)))
    if commands:
        out += [".SH COMMANDS", *commands]
    if parser.epilog:
        out += [".SH NOTES", ".nf", _roff(parser.epilog.strip()), ".fi"]
    out += [".SH SEE ALSO", ", ".join(f"\\fB{_roff(p)}\\fR(1)" for p in SEE_ALSO if p != program) + ";",
            "the documentation under docs/ in the pydp source (docs/install.md, docs/operations.md)."]
    return "\n".join(out) + "\n"


# ---- bash completion ----

FILE_METAVARS = re.compile(r"FILE|PATH|DIR|DB|pcap|\.toml", re.I)


def _walk(path: str, parser: argparse.ArgumentParser, table: dict) -> None:
    subs = _subcommands(parser)
    opts, values, choices, files = [], [], {}, []
    for action in _options(parser):
        for o in action.option_strings:
            opts.append(o)
            if action.nargs != 0:
                values.append(o)
                if action.choices:
                    choices[o] = [str(c) for c in action.choices]
                elif FILE_METAVARS.search(str(action.metavar or action.dest)):
                    files.append(o)
    table[path] = {"subs": [n for n, _, _ in subs], "opts": opts, "values": values, "choices": choices,
                   "files": files}
    for name, _, sub in subs:
        _walk(f"{path} {name}", sub, table)


def completion(programs: dict[str, argparse.ArgumentParser]) -> str:
    table: dict[str, dict] = {}
    for prog, parser in programs.items():
        _walk(prog, parser, table)

    def assign(array: str, key: str, words: list[str]) -> str:
        return f"_pydp_{array}[{shlex.quote(key)}]={shlex.quote(' '.join(words))}"

    lines = ["# bash completion for the pydp programs; generated by control/docgen.py from their argparse",
             "# definitions (do not edit). Installed once and linked under each program's name.",
             "declare -gA _pydp_subs _pydp_opts _pydp_values _pydp_files _pydp_choices"]
    for path, t in table.items():
        lines.append(assign("subs", path, t["subs"]))
        lines.append(assign("opts", path, t["opts"]))
        lines.append(assign("values", path, t["values"]))
        lines.append(assign("files", path, t["files"]))
        for opt, words in t["choices"].items():
            lines.append(assign("choices", f"{path} {opt}", words))
    lines.append(r'''
_pydp_complete() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" path i w
    path="${COMP_WORDS[0]##*/}"
    [ "$COMP_CWORD" -gt 0 ] && prev="${COMP_WORDS[COMP_CWORD-1]}"
    # descend into the subcommands named so far
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if [[ " ${_pydp_subs[$path]} " == *" $w "* ]]; then path="$path $w"; fi
    done
    COMPREPLY=()
    if [[ " ${_pydp_values[$path]} " == *" $prev "* ]]; then
        if [ -n "${_pydp_choices[$path $prev]+set}" ]; then
            mapfile -t COMPREPLY < <(compgen -W "${_pydp_choices[$path $prev]}" -- "$cur")
        elif [[ " ${_pydp_files[$path]} " == *" $prev "* ]]; then
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ "$cur" == -* || -z "${_pydp_subs[$path]}" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${_pydp_opts[$path]}" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -W "${_pydp_subs[$path]}" -- "$cur")
    fi
    return 0
}''')
    lines.append("complete -F _pydp_complete " + " ".join(programs))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m control.docgen", description=__doc__.split("\n")[0])
    pydp.add_version_option(ap)
    ap.add_argument("--man", metavar="DIR", help="write DIR/<program>.1 for every program")
    ap.add_argument("--completion", metavar="FILE", help="write the bash completion script here")
    ap.add_argument("--date", metavar="YYYY-MM-DD", default=os.environ.get("PYDP_MAN_DATE"),
                    help="date in the pages' header (default today, or $PYDP_MAN_DATE)")
    args = ap.parse_args(argv)
    if not args.man and not args.completion:
        ap.error("nothing to do: give --man DIR and/or --completion FILE")
    parsers = {p: parser_of(p) for p in PROGRAMS}
    if args.man:
        d = Path(args.man)
        d.mkdir(parents=True, exist_ok=True)
        for prog, parser in parsers.items():
            (d / f"{prog}.1").write_text(manpage(prog, parser, args.date))
    if args.completion:
        f = Path(args.completion)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(completion(parsers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
