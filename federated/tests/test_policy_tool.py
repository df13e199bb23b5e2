"""Site policy tooling: ``mmdomain fed policy init|check``, one validation rule for the tool,
``load_policy`` and the site's start (warm SuperExec, ``deploy``), and what reaches the
coordinator when a job is refused or the site's file is bad. In-process, no deployment."""

import tomllib

import pytest
from click.testing import CliRunner
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from mmdomain.errors import ConfigError
from mmdomain_federated import policy as P
from mmdomain_federated.plugin import fed
from mmdomain_federated.records import numpy_to_arrays

BAD = """\
require-secagg = true
min-noise-multiplier = "0.8"
max-rounds = 10.0
max-clip-norm = -1
require-dp = "true"
allowed-plugins = []
secagg = true
"""


def _cli(*args):
    return CliRunner().invoke(fed, ["policy", *map(str, args)])


def test_init_writes_a_documented_template_that_loads_as_the_hospital_policy(tmp_path):  # < 0.5 s
    path = tmp_path / "policy.toml"
    result = _cli("init", path)
    assert result.exit_code == 0, result.output
    assert "valid site policy" in result.output and "DP-SGD at this site" in result.output
    text = path.read_text()
    for key in P.KEYS:  # every key: its meaning, type, default and an example, in that order
        doc = text.split(f"# {key.name}:", 1)[1]
        assert doc.index("type:") < doc.index("default:") < doc.index(f"example: {key.name} = ")
        example = tomllib.loads(f"{key.name} = {key.example}")
        assert P.check_data(example).ok, key.name  # the documented example is itself valid
    assert "default: 0.0 (no minimum)" in text and "default: absent (any installed plugin)" in text
    assert P.load_policy(path) == P.TEMPLATE_POLICY
    assert P.TEMPLATE_POLICY.require_local_dp and P.TEMPLATE_POLICY.min_noise_multiplier > 0
    assert P.check_file(path).warnings == []
    # an existing file is kept unless --force
    path.write_text("max-rounds = 7\n")
    refused = _cli("init", path)
    assert refused.exit_code == 1 and "--force" in refused.output
    assert path.read_text() == "max-rounds = 7\n"
    assert _cli("init", path, "--force").exit_code == 0
    assert P.load_policy(path) == P.TEMPLATE_POLICY


def test_check_lists_every_problem_readably_and_exits_2(tmp_path):  # < 0.5 s
    path = tmp_path / "policy.toml"
    path.write_text(BAD)
    result = _cli("check", path)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    err = result.stderr
    assert "Traceback" not in result.output and "invalid site policy (7 problems)" in err
    for expected in ("unknown key 'require-secagg' (line 1): did you mean 'secagg-required'?",
                     "min-noise-multiplier (line 2): must be a number, got the string '0.8' (write it without quotes)",
                     "max-rounds (line 3): must be a whole number",
                     "max-clip-norm (line 4): must be >= 0",
                     "require-dp (line 5): must be true or false, got the string 'true'",
                     "allowed-plugins (line 6): is empty: every dataset comes from a plugin",
                     "'secagg' is a run-config key (what a job asks for); the site's limit on it is 'secagg-required'"):
        assert expected in err, (expected, err)
    with pytest.raises(P.PolicyFileError) as info:  # load_policy: the same rule, every problem at once
        P.load_policy(path)
    assert isinstance(info.value, ConfigError) and len(info.value.problems) == 7
    assert str(path) in str(info.value) and not any(str(tmp_path) in p for p in info.value.problems)


@pytest.mark.parametrize("content, message", [
    (b"max-rounds = 3\nrequire-dp = true  # caf\xe9\n", "not UTF-8 text (line 2: byte 0xe9 at offset 39)"),
    (b"require-dp = true\nmax-rounds = [\n", "not TOML:"),
    (b"require-dp = false\nrequire-local-dp = true\n", "require-dp = false contradicts require-local-dp = true"),
    (b"require-dp = false\nmin-noise-multiplier = 1.0\n", "require-dp = false contradicts min-noise-multiplier"),
    (b"min-noise-multiplier = nan\n", "must be a finite number"),  # nan < x is False: it would pass every job
    (b"max-rounds = true\n", "max-rounds (line 1): must be a whole number, got true"),
    (b'allowed-plugins = "example"\n', 'must be a list of plugin names such as ["example"]'),
    (b"[policy]\nrequire-dp = true\n", "unknown table [policy] (line 1)"),
    (b"approved-apps = []\n", "approved-apps (line 1): is empty: every app would be refused"),
    (b'approved-apps = "' + b"a" * 64 + b'"\n', "approved-apps (line 1): must be a list of app hashes"),
    (b'approved-apps = ["e995a48c"]\n', "must hold sha256 digests of 64 hex digits (mmdomain fed app-hash"),
    (None, "the file cannot be read (FileNotFoundError"),
])
def test_check_refuses_what_cannot_be_a_policy(tmp_path, content, message):  # < 0.1 s each
    path = tmp_path / "policy.toml"
    if content is not None:
        path.write_bytes(content)
    result = _cli("check", path)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "Traceback" not in result.output


def test_check_summarises_a_valid_policy_and_warns_about_weak_ones(tmp_path):  # < 0.5 s
    path = tmp_path / "policy.toml"
    path.write_text('max-clip-norm = 2\nallowed-plugins = ["remote-sensing", "example"]\nmax-rounds = 20\n')
    result = _cli("check", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "valid site policy" in out and "clip norm: <= 2" in out and "rounds: at most 20" in out
    assert "differential privacy: not required" in out
    assert "warning: max-clip-norm = 2 limits DP jobs only" in out
    assert "'remote-sensing' is not a plugin installed here" in out and "did you mean 'remote_sensing'?" in out


def test_the_site_refuses_to_start_with_a_bad_policy_file(tmp_path, capsys):  # < 1 s
    from mmdomain_federated import warm_exec
    from mmdomain_federated.deploy import LocalDeployment, deploy_local

    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text(BAD)
    good.write_text(P.template())
    assert warm_exec.split_policy_file(["--insecure", f"--policy-file={good}", "--parent-pid", "3"]) == (
        str(good), ["--insecure", "--parent-pid", "3"])
    with pytest.raises(SystemExit) as info:  # the warm SuperExec: before the fork server or any Flower code
        warm_exec.main(["--runtime-api-address", "127.0.0.1:1", "--insecure", "--policy-file", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "did you mean 'secagg-required'?" in err and "not started" in err
    warm_exec.check_policy_at_start(str(good))  # a valid file: its summary, and on it goes
    assert "valid site policy" in capsys.readouterr().err
    dep = LocalDeployment(tmp_path / "dep")
    with pytest.raises(P.PolicyFileError, match="did you mean 'secagg-required'"):
        dep.start_supernode("supernode-0", None, {"data-root": str(tmp_path), "policy-file": str(bad)})
    assert dep.procs.procs == {}  # nothing was started
    with pytest.raises(P.PolicyFileError):
        deploy_local(2, {}, work=tmp_path / "work", site_roots=[tmp_path, tmp_path], policies=[good, bad])
    assert not (tmp_path / "work").exists()  # refused before the SuperLink, before any key or log


def _train(node=101):  # refused or failed before the weights are read: none are sent
    return Message(RecordDict({"arrays": numpy_to_arrays({}), "config": ConfigRecord({"server-round": 1})}),
                   message_type=MessageType.TRAIN, dst_node_id=node)


def test_the_coordinator_hears_why_without_the_sites_paths(settings_for, tmp_path, caplog):  # < 3 s
    from mmdomain_federated.inprocess import LocalGrid

    bad = tmp_path / "secret-ward-7" / "policy.toml"
    bad.parent.mkdir()
    bad.write_text("require-secagg = true\n")
    s = settings_for()
    grid = LocalGrid(1, s.as_run_config(), node_configs=[{"policy-file": str(bad)}])
    with caplog.at_level("ERROR", logger="mmdomain.federated.site"):
        (reply,) = grid.send_and_receive([_train()])
    assert reply.has_error()
    reason = reply.error.reason
    assert "site policy file invalid: unknown key 'require-secagg'" in reason and "secagg-required" in reason
    assert "ConfigError" not in reason and "secret-ward-7" not in reason and str(tmp_path) not in reason
    assert any(str(bad) in r.getMessage() for r in caplog.records)  # the site's own log keeps the path
    # a job refusal says what the site requires and what the job asked
    ok = tmp_path / "ok.toml"
    ok.write_text("require-local-dp = true\nsecagg-required = true\n")
    job = settings_for(central_dp=True)
    grid = LocalGrid(1, job.as_run_config(), node_configs=[{"policy-file": str(ok)}])
    (reply,) = grid.send_and_receive([_train()])
    refused = str(reply.content["site"]["refused"])
    assert "the site requires local DP-SGD (local-dp=true), the job has local-dp=false" in refused
    assert "central-dp=true does not replace it" in refused
    assert "the site requires secure aggregation (secagg=true), the job has secagg=false" in refused


def test_policy_rules_the_old_reader_let_through(settings_for, registry):  # < 1 s
    # require-dp with a DP job whose noise is 0: no privacy at all, refused
    zero = settings_for(local_dp=True, local_noise_multiplier=0.0)
    assert any("adds no noise" in p for p in P.violations(P.SitePolicy(require_dp=True), zero, registry))
    assert P.violations(P.SitePolicy(require_dp=True), settings_for(local_dp=True), registry) == []

    class LookAlike:  # the toy dataset's plugin renamed "mmdomain_lookalike": not a built-in
        def __getattr__(self, name):
            return getattr(registry, name)

        def owner(self, kind, name):
            owner = registry.owner(kind, name)
            return "mmdomain_lookalike" if owner == "example" else owner

    problems = P.violations(P.SitePolicy(allowed_plugins=("medical",)), settings_for(), LookAlike())
    assert any("from plugin 'mmdomain_lookalike', not in the site's allowed-plugins" in p for p in problems)
    assert P.violations(P.SitePolicy(allowed_plugins=("example",)), settings_for(), registry) == []


def test_a_target_epsilon_cannot_plan_the_noise_below_the_sites_minimum(settings_for, tmp_path, caplog):  # < 3 s
    """The job's configured noise passes; what a huge target epsilon plans on this site's data does not."""
    from mmdomain_federated.inprocess import LocalGrid

    policy = tmp_path / "policy.toml"
    policy.write_text("require-local-dp = true\nmin-noise-multiplier = 0.8\n")
    loose = settings_for(local_dp=True, target_epsilon=1000.0, local_noise_multiplier=1.0, max_steps=1)
    assert P.violations(P.load_policy(policy), loose, None) == []  # the configured noise looks fine
    grid = LocalGrid(1, loose.as_run_config(), node_configs=[{"policy-file": str(policy)}])
    with caplog.at_level("WARNING", logger="mmdomain.federated.site"):
        (reply,) = grid.send_and_receive([_train()])
    refused = str(reply.content["site"]["refused"])
    assert "planned for target-epsilon 1000" in refused and "< the site's minimum 0.8" in refused
    assert any("planned for target-epsilon" in r.getMessage() for r in caplog.records)
    strict = settings_for(local_dp=True, target_epsilon=1.0, max_steps=1)  # plans a large noise: trains
    grid = LocalGrid(1, strict.as_run_config(), node_configs=[{"policy-file": str(policy)}])
    (reply,) = grid.send_and_receive([_train()])
    assert not reply.has_error() and "refused" not in reply.content["site"] and "arrays" in reply.content
