"""Broken configs, each refused by `check-config` with exit status 2 and one precise line.

Most go through the CLI's `main` in this process (the same code path as the command, without an
interpreter start per case); a handful run as `python -m canaryproxy check-config` and `run`
processes, to show the exit status and the absence of a traceback from outside."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from canaryproxy.cli import main

UPSTREAMS = 'upstreams: {stable: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}\n'
ROLLOUT = "rollout:\n  stages: [{weight: 10, hold: 1m}, {weight: 100, hold: 1m}]\n"


@dataclass(frozen=True)
class Broken:
    name: str
    text: str  # `{tmp}` is a fresh directory
    fragment: str  # in the one line on stderr
    status: int = 2


CORPUS = [
    # item 5 of issue 10: errors that used to pass check-config
    Broken("state-parent-missing", UPSTREAMS + "state: {path: /proc/nope/state.json}\n",
           "state.path: the directory of /proc/nope/state.json does not exist and cannot be created in /proc"),
    Broken("state-parent-is-a-file", UPSTREAMS + "state: {path: /etc/passwd/state.json}\n",
           "state.path: the parent of /etc/passwd/state.json is not a directory (/etc/passwd is a file)"),
    Broken("state-path-is-a-directory", UPSTREAMS + "state: {path: '{tmp}'}\n", "state.path: {tmp} is a directory"),
    Broken("state-dir-takes-no-files", UPSTREAMS + "state: {path: /sys/state.json}\n",
           "state.path: cannot create files in /sys, the directory of /sys/state.json"),
    Broken("audit-under-a-file", UPSTREAMS + "state: {path: '{tmp}/s.json', audit_log: /etc/passwd/a/audit.jsonl}\n",
           "state.audit_log: the parent of /etc/passwd/a/audit.jsonl is not a directory (/etc/passwd is a file)"),
    Broken("duplicate-top-level-key", UPSTREAMS + "access_log: true\n" + UPSTREAMS,
           "not valid YAML at line 3, column 1: key 'upstreams' is written twice (first at line 1)"),
    Broken("duplicate-nested-key", UPSTREAMS + "routing:\n  weight: 5\n  sticky: [client-ip]\n  weight: 10\n",
           "line 5, column 3: key 'weight' is written twice (first at line 3)"),
    Broken("duplicate-key-in-a-list-item",
           UPSTREAMS + "rollout:\n  stages:\n    - {weight: 10, hold: 1m, weight: 20}\n",
           "line 4, column 30: key 'weight' is written twice (first at line 4)"),
    Broken("listen-not-an-ip", "listen: 999.1.1.1:18380\n" + UPSTREAMS,
           "listen: 999.1.1.1:18380: 999.1.1.1 is not an IP address"),
    Broken("listen-short-ip", "listen: 127.1:18380\n" + UPSTREAMS, "listen: 127.1:18380: 127.1 is not an IP address"),
    Broken("listen-unresolvable", "listen: no-such-host.invalid:18380\n" + UPSTREAMS,
           "listen: no-such-host.invalid:18380: cannot resolve 'no-such-host.invalid'"),
    Broken("admin-not-this-machine", "admin: {listen: '192.0.2.1:9090', token: t}\n" + UPSTREAMS,
           "admin.listen: 192.0.2.1:9090: 192.0.2.1 is not an address of this machine"),
    Broken("admin-v6-not-this-machine", "admin: {listen: '[2001:db8::1]:9090', token: t}\n" + UPSTREAMS,
           "admin.listen: [2001:db8::1]:9090: 2001:db8::1 is not an address of this machine"),
    Broken("admin-on-the-proxy-port", "listen: 0.0.0.0:18380\nadmin: {listen: '127.0.0.1:18380'}\n" + UPSTREAMS,
           "admin.listen: 127.0.0.1:18380 is also the proxy's listen address (0.0.0.0:18380)"),
    # admin
    Broken("allowed-hosts-wildcard", "admin: {allowed_hosts: ['*']}\n" + UPSTREAMS,
           "admin.allowed_hosts: list host names as name or name:port, not URLs or patterns, got '*'"),
    Broken("allowed-hosts-url", "admin: {allowed_hosts: ['http://ops.example']}\n" + UPSTREAMS,
           "not URLs or patterns, got 'http://ops.example'"),
    Broken("allowed-hosts-space", "admin: {allowed_hosts: ['ops example']}\n" + UPSTREAMS,
           "admin.allowed_hosts: expected a host name or address with an optional :port, got 'ops example'"),
    Broken("admin-public-without-token", "admin: {listen: '0.0.0.0:9090'}\n" + UPSTREAMS,
           "admin.listen is 0.0.0.0, not a loopback address: set admin.token"),
    # weights: one bucket (0.01%) is the smallest step, for subnormals too
    Broken("weight-subnormal", UPSTREAMS + "routing: {weight: 1e-320}\n",
           "routing.weight: weight has at most two decimals (0.01% steps), got 1e-320"),
    Broken("weight-below-one-bucket", UPSTREAMS + "routing: {weight: 0.001}\n", "got 0.001"),
    Broken("weight-above-100", UPSTREAMS + "routing: {weight: 101}\n",
           "routing.weight: Input should be less than or equal to 100"),
    Broken("stage-weight-below-one-bucket", UPSTREAMS + "rollout:\n  stages: [{weight: 0.001, hold: 1m}]\n",
           "rollout.stages[0].weight: weight has at most two decimals"),
    Broken("shadow-stage-with-a-weight",
           UPSTREAMS + "rollout:\n  stages: [{shadow: 20, weight: 5, hold: 1m}, {weight: 10, hold: 1m}]\n",
           "rollout.stages[0]: a stage is live ({weight: N}) or a shadow stage ({shadow: N}), not both"),
    Broken("shadow-stage-after-a-live-one",
           UPSTREAMS + "rollout:\n  stages: [{weight: 5, hold: 1m}, {shadow: 20, hold: 1m}, {weight: 10, hold: 1m}]\n",
           "stage 2 is a shadow stage after a live stage: shadow stages come before every live stage"),
    Broken("shadow-above-100", UPSTREAMS + "rollout:\n  stages: [{shadow: 120, hold: 1m}, {weight: 10, hold: 1m}]\n",
           "rollout.stages[0].shadow: Input should be less than or equal to 100"),
    Broken("shadow-zero", UPSTREAMS + "rollout:\n  stages: [{shadow: 0, hold: 1m}, {weight: 10, hold: 1m}]\n",
           "rollout.stages[0].shadow: Input should be greater than 0"),
    Broken("shadow-only", UPSTREAMS + "rollout:\n  stages: [{shadow: 20, hold: 1m}]\n",
           "shadow stages must be followed by at least one live stage"),
    Broken("stage-neither-live-nor-shadow", UPSTREAMS + "rollout:\n  stages: [{hold: 1m}]\n",
           "a stage needs a weight (a live stage) or a shadow share (a shadow stage)"),
    Broken("shadow-without-the-judge",
           UPSTREAMS + "rollout:\n  stages: [{shadow: 20, hold: 1m}, {weight: 10, hold: 1m}]\n"
           "  judge: {enabled: false}\n",
           "shadow stages need the judge (rollout.judge.enabled: true)"),
    Broken("stages-going-down", UPSTREAMS + "rollout:\n  stages: [{weight: 50, hold: 1m}, {weight: 10, hold: 1m}]\n",
           "stage 2 weight must be above 50%"),
    # addresses and URLs
    Broken("listen-port-too-big", "listen: 127.0.0.1:70000\n" + UPSTREAMS, "listen: port must be within 0-65535"),
    Broken("listen-without-port", "listen: localhost\n" + UPSTREAMS, "listen: expected host:port"),
    Broken("upstream-not-http", 'upstreams: {stable: "ftp://a", canary: "http://b"}\n',
           "upstreams.stable: expected an http:// or https:// URL with a host"),
    Broken("upstream-with-query", 'upstreams: {stable: "http://a/?x=1", canary: "http://b"}\n',
           "upstreams.stable: an upstream URL takes no query or fragment"),
    Broken("upstream-missing", 'upstreams: {stable: "http://a"}\n', "upstreams.canary: required"),
    Broken("trusted-proxy-not-a-cidr", UPSTREAMS + "trusted_proxies: [10.0.0.0/33]\n",
           "trusted_proxies: expected CIDRs such as 10.0.0.0/8, got '10.0.0.0/33'"),
    # keys and values
    Broken("unknown-key", UPSTREAMS + "listne: 127.0.0.1:8080\n", "listne: unknown key"),
    Broken("unknown-nested-key", UPSTREAMS + "timeouts: {conect: 5s}\n", "timeouts.conect: unknown key"),
    Broken("bad-duration", UPSTREAMS + "timeouts: {connect: soon}\n", "timeouts.connect: expected a duration"),
    Broken("negative-duration", UPSTREAMS + "timeouts: {connect: -1}\n",
           "timeouts.connect: a duration must be a finite number of seconds >= 0, got -1"),
    Broken("bad-size", UPSTREAMS + "limits: {max_request_body: lots}\n", "limits.max_request_body:"),
    Broken("bad-sticky", UPSTREAMS + "routing: {sticky: ['ip']}\n", "unknown sticky key 'ip'"),
    Broken("bad-log-level", UPSTREAMS + "log_level: loud\n",
           "log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
    Broken("file-backend-without-path", UPSTREAMS + "state: {backend: file}\n", "backend file needs state.path"),
    Broken("unknown-backend", UPSTREAMS + "state: {backend: etcd}\n",
           "state.backend: Input should be 'memory' or 'file'"),
    Broken("rule-two-comparisons", UPSTREAMS + ROLLOUT
           + "  rules: [{name: e, metric: error_rate, above: 0.1, below: 0.5, window: 1m}]\n",
           "rule 'e' needs exactly one of above, below, above_stable, below_stable (got above, below)"),
    Broken("rule-unknown-metric",
           UPSTREAMS + ROLLOUT + "  rules: [{name: e, metric: errorz, above: 0.1, window: 1m}]\n",
           "rollout.rules[0]: rule 'e': unknown metric 'errorz'; known metrics:"),
    Broken("rule-names-repeated", UPSTREAMS + ROLLOUT + "  rules:\n"
           "    - {name: e, metric: error_rate, above: 0.1, window: 1m}\n"
           "    - {name: e, metric: error_rate, above: 0.2, window: 1m}\n",
           "rule names must be unique; repeated: e"),
    Broken("judge-unknown-test", UPSTREAMS + ROLLOUT + "  judge: {tests: {vibes: {enabled: false}}}\n",
           "unknown judge test 'vibes'"),
    Broken("webhook-not-http", UPSTREAMS + "alerts: {webhooks: [{url: 'mailto:ops@example.com'}]}\n",
           "expected an http:// or https:// URL, got 'mailto:ops@example.com'"),
    Broken("guardrail-bad-regex", UPSTREAMS + "inspection: {guardrails: {text: [{name: x, pattern: '(('}]}}\n",
           "inspection.guardrails.text[0].pattern: not a valid regular expression"),
    Broken("schema-file-missing", UPSTREAMS + "inspection: {routes: [{path: /v1, schema: '{tmp}/none.json'}]}\n",
           "inspection.routes[0].schema: cannot read a JSON schema from {tmp}/none.json"),
    Broken("env-not-set", UPSTREAMS + "admin: {token: '${CANARYPROXY_TEST_UNSET_VARIABLE}'}\n",
           "admin.token: environment variable CANARYPROXY_TEST_UNSET_VARIABLE is not set"),
    # the file itself
    Broken("yaml-syntax", UPSTREAMS + "routing: {weight: [\n", "not valid YAML at line"),
    Broken("yaml-tab-indent", UPSTREAMS + "routing:\n\tweight: 5\n", "not valid YAML at line 3"),
    Broken("empty-file", "", "the file is empty; see config/example.yaml"),
    Broken("top-level-list", "- listen: 127.0.0.1:8080\n", "expected a mapping of settings at the top, got list"),
    Broken("not-utf8", "listen: \xff\xfe\n", "cannot read"),
]


def _write(tmp_path: Path, broken: Broken) -> tuple[Path, str]:
    path = tmp_path / f"{broken.name}.yaml"
    text = broken.text.replace("{tmp}", str(tmp_path))
    # latin-1 keeps the one non-UTF-8 case's bytes as written; every other case is ASCII
    path.write_bytes(text.encode("latin-1"))
    return path, broken.fragment.replace("{tmp}", str(tmp_path))


def test_the_corpus_is_large_and_every_name_is_unique():
    assert len(CORPUS) >= 30 and len({b.name for b in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("broken", CORPUS, ids=lambda b: b.name)
def test_check_config_refuses_it_with_one_precise_line(broken, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CANARYPROXY_TEST_UNSET_VARIABLE", raising=False)
    path, fragment = _write(tmp_path, broken)
    status = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    assert status == broken.status, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"canaryproxy: {path}: ") and fragment in lines[0], err


@pytest.mark.parametrize("state", ["state.json", "new/dirs/state.json"])
def test_a_directory_that_exists_or_can_be_made_passes_and_check_config_leaves_nothing_behind(
        tmp_path, capsys, state):
    path = tmp_path / "ok.yaml"
    path.write_text(UPSTREAMS + f"state: {{path: '{tmp_path}/{state}'}}\n")
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]


def test_a_well_formed_shadow_stage_passes(tmp_path, capsys):
    path = tmp_path / "shadow.yaml"
    stages = "[{shadow: 20, hold: 10m}, {weight: 5, hold: 10m}, {weight: 100, hold: 1m}]"
    path.write_text(UPSTREAMS + f"rollout:\n  stages: {stages}\nshadow: {{max_in_flight: 8}}\n")
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("section, fragment", [
    ("{max_in_flight: 0}", "shadow.max_in_flight"),
    ("{max_response_bytes: 12}", "shadow.max_response_bytes"),
    ("{tolerance: 1.0}", "shadow.tolerance"),
    ("{negligible: 2}", "shadow.negligible"),
    ("{keep_output: true}", "shadow.keep_output"),
])
def test_a_bad_shadow_section_names_its_field(tmp_path, capsys, section, fragment):
    path = tmp_path / "shadow.yaml"
    path.write_text(UPSTREAMS + f"shadow: {section}\n")
    assert main(["check-config", str(path)]) == 2
    assert fragment in capsys.readouterr().err


def test_a_key_a_merge_brings_may_be_overridden(tmp_path, capsys):
    # `<<:` merges are YAML's way to share settings; overriding a merged key is what they are for.
    path = tmp_path / "merge.yaml"
    path.write_text(UPSTREAMS + "timeouts:\n  <<: {connect: 5s, idle: 90s}\n  idle: 30s\n")
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err


# --- from outside: real processes ------------------------------------------------------------------

# (command, case): four interpreters, started together, so the test stays within a few seconds.
BY_PROCESS = [("check-config", "state-parent-is-a-file"), ("check-config", "duplicate-nested-key"),
              ("check-config", "listen-not-an-ip"), ("run", "state-parent-missing")]


def test_as_processes_check_config_and_run_exit_2_with_one_line_and_no_traceback(tmp_path):
    by_name = {b.name: b for b in CORPUS}
    runs = []
    for command, name in BY_PROCESS:
        path, fragment = _write(tmp_path, by_name[name])
        arguments = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
        process = subprocess.Popen([sys.executable, "-m", "canaryproxy", *arguments], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        runs.append((arguments, fragment, process))
    for arguments, fragment, process in runs:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 2, (arguments, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1 and fragment in err, (arguments, err)
