"""Shell completion for the argparse commands (ks-ingest, ks-exporter, ks-alerts, ks-remote-write), as typer gives the others.

`--show-completion [SHELL]` prints a completion script for bash, zsh or fish (default: the
shell this runs under); `--install-completion [SHELL]` writes it where that shell finds it,
in the same places typer uses for `ks` and `ks-features`.  The script is built
from the parser itself: its options, with file-name completion after those that take a path.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")
PATH_DESTS = re.compile(r"(dir|file|config|path|out)$")


def _shell(name: str | None) -> str:
    if name:
        if name not in SHELLS:
            raise SystemExit(f"completion: unknown shell {name!r}; one of {', '.join(SHELLS)}")
        return name
    try:
        import shellingham  # typer's own shell detection

        name = shellingham.detect_shell()[0]
    except Exception:  # noqa: BLE001 - no parent shell to detect: fall back to $SHELL
        name = Path(os.environ.get("SHELL", "bash")).name
    return name if name in SHELLS else "bash"


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, bool, str]]:
    """(long option, takes a path, help) for every option of the parser."""
    out = []
    for a in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        for o in a.option_strings:
            if o.startswith("--"):
                takes_path = a.nargs != 0 and (a.type is Path or bool(PATH_DESTS.search(a.dest)))
                out.append((o, takes_path, (a.help or "").replace("%%", "%")))
    return out


def script(prog: str, parser: argparse.ArgumentParser, shell: str) -> str:
    opts = _options(parser)
    if shell == "fish":
        lines = [f"complete -c {prog} -f"]
        for o, path, help_ in opts:
            desc = help_.split(" (")[0].replace("'", "")
            lines.append(f"complete -c {prog} -l {o[2:]}" + (" -r -F" if path else "") + f" -d '{desc}'")
        return "\n".join(lines) + "\n"
    fn = "_" + re.sub(r"\W", "_", prog) + "_completion"
    paths = "|".join(o for o, p, _ in opts if p) or "--no-such-option"
    bash = f"""{fn}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        {paths}) COMPREPLY=($(compgen -f -- "$cur")); return 0;;
    esac
    COMPREPLY=($(compgen -W "{' '.join(o for o, _, _ in opts)}" -- "$cur"))
}}
complete -o default -F {fn} {prog}
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash
    return bash


def install(prog: str, parser: argparse.ArgumentParser, shell: str) -> Path:
    home = Path.home()
    text = script(prog, parser, shell)
    if shell == "fish":
        target = home / ".config" / "fish" / "completions" / f"{prog}.fish"
        rc = None
    else:
        target = home / (".bash_completions" if shell == "bash" else ".zfunc") / f"{prog}.{shell}"
        rc = home / (".bashrc" if shell == "bash" else ".zshrc")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    if rc is not None:
        line = f"source '{target}'"
        if line not in (rc.read_text() if rc.exists() else ""):
            with rc.open("a") as f:
                f.write(f"\n{line}\n")
    return target


def add_completion(parser: argparse.ArgumentParser) -> None:
    """--install-completion [SHELL] and --show-completion [SHELL] on an argparse parser; each acts and
    exits when parsed (like --help), so other arguments need not be valid."""
    prog = parser.prog

    class Show(argparse.Action):
        def __call__(self, p, ns, value, option_string=None):
            sys.stdout.write(script(prog, p, _shell(value)))
            p.exit(0)

    class Install(argparse.Action):
        def __call__(self, p, ns, value, option_string=None):
            shell = _shell(value)
            print(f"{shell} completion installed in {install(prog, p, shell)}; it works in a new shell")
            p.exit(0)

    parser.add_argument("--install-completion", action=Install, nargs="?", metavar="SHELL", default=argparse.SUPPRESS,
                        help="install completion for SHELL (bash, zsh, fish; default: the current shell)")
    parser.add_argument("--show-completion", action=Show, nargs="?", metavar="SHELL", default=argparse.SUPPRESS,
                        help="print the completion script for SHELL, to copy it or customize the installation")
