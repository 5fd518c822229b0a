"""Command-line rewrites applied before Typer parses: launcher arguments, bare ``--resume``."""

from __future__ import annotations

from ganscale.runtime.env import set_local_rank

_LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")


def strip_launcher_args(argv: list[str]) -> list[str]:
    """The deepspeed launcher appends --local_rank=N; hand it to the runtime, out of Typer's way."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a.startswith(tuple(f + "=" for f in _LOCAL_RANK_FLAGS)):
            set_local_rank(a.split("=", 1)[1])
        elif a in _LOCAL_RANK_FLAGS and i + 1 < len(argv):
            set_local_rank(argv[i + 1])
            skip = True
        else:
            out.append(a)
    return out


def bare_resume(argv: list[str]) -> list[str]:
    """`--resume` with no value means `--resume latest`."""
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        if a == "--resume":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("-") or nxt.endswith((".yaml", ".yml")):
                out.append("latest")
    return out
