"""Built-in sub-commands contributed through the same hook plugins use."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl(trylast=True)
def register_commands(cli):
    """``local-demo``: one synthetic site, fusion against each single modality (no federation).
    The full demo, ``demo``, belongs to the federated layer."""
    from ..demo import demo_command  # here, not at the top: the manager loads this module, the demo imports torch

    cli.add_command(demo_command, name="local-demo")
