"""Built-in sub-commands contributed through the same hook plugins use."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from ..demo import demo_command

    cli.add_command(demo_command, name="demo")
