"""The `ganscale` command line: one Typer app composed of command groups.

- :mod:`ganscale.cli.app`: the app, ``train``, ``sample``, the entry point :func:`main`;
- :mod:`ganscale.cli_options` (beside this package, not in it): arguments and options shared by
  the commands, declared once; the command groups import it without importing this package,
  whose app imports them;
- :mod:`ganscale.cli.argv`: rewrites before parsing (launcher ``--local_rank``, bare ``--resume``).

The ``data``, ``classifier``, ``eval`` and ``bench`` groups live beside the code they drive
(``ganscale.corpus.cli``, ``ganscale.evaluation.cli``, ``ganscale.bench.step_bench``).
"""

from ganscale.cli.app import _register_groups, app, main

__all__ = ["_register_groups", "app", "main"]
