"""Test kit for plugin authors: a pytest plugin (fixtures) and reusable contract tests.

In a plugin's tests::

    from mmdomain.testing import PluginContract

    class TestMyPluginContract(PluginContract):
        plugin_name = "my-plugin"   # the entry-point name
"""

from .contract import CHECKS, CheckResult, PluginContract, run_contract

__all__ = ["CHECKS", "CheckResult", "PluginContract", "run_contract"]
