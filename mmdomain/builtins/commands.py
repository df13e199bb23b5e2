"""Built-in sub-commands contributed through the same hook plugins use."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl(trylast=True)
def register_commands(cli):
    """``demo`` here is the local-only demo; an installed plugin that adds its own ``demo``
    (the federated layer's full demo) takes precedence."""
    from ..demo import demo_command

    if "demo" not in cli.commands:
        cli.add_command(demo_command, name="demo")
