from mmdomain.testing import PluginContract


class TestContract(PluginContract):
    plugin_name = "remote_sensing"
