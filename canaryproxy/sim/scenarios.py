"""What the demo rolls out: the two versions, the scenarios, and the rollout config it runs."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from canaryproxy.core.units import format_duration
from canaryproxy.sim.simulator import Behaviour

if TYPE_CHECKING:
    pass

# --- what the demo rolls out ------------------------------------------------------------------------

STABLE = Behaviour(latency=0.25, ttft=0.08, tokens_mean=60, error_rate=0.01, dislike_rate=0.2,
                   model="demo-model-v1")
CANARY = Behaviour(latency=0.25, ttft=0.08, tokens_mean=60, error_rate=0.01, dislike_rate=0.2,
                   model="demo-model-v2")


SHADOW_SHARE = 50.0  # percent of the requests a shadow scenario's first stage copies to the canary


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    story: str  # one line for the top of the screen
    regression: Mapping[str, object] = field(default_factory=dict)  # how the canary changes
    # Percent of the requests copied to the canary in a shadow stage before the live ones; 0: none.
    # A shadow scenario's regression is there from the start: it is the shadow stage's to catch,
    # before any user is served by the canary. The others' starts at stage 2, once users are.
    shadow: float = 0.0

    @property
    def regression_from_start(self) -> bool:
        return self.shadow > 0


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("healthy", "the canary behaves like stable: it is promoted stage by stage"),
    Scenario("errors", "at stage 2 the canary's error rate rises from 1% to 8%", {"error_rate": 0.08}),
    Scenario("latency", "at stage 2 the canary becomes twice as slow",
             {"latency": CANARY.latency * 2, "ttft": CANARY.ttft * 2}),
    Scenario("tokens", "at stage 2 the canary's answers become twice as long",
             {"tokens_mean": CANARY.tokens_mean * 2}),
    Scenario("guardrail", "at stage 2 a guardrail starts cutting 10% of the canary's answers",
             {"guardrail_rate": 0.10}),
    Scenario("schema", "at stage 2 20% of the canary's structured outputs break",
             {"schema_break_rate": 0.20}),
    Scenario("feedback", "at stage 2 users start to dislike the canary's answers twice as often",
             {"dislike_rate": CANARY.dislike_rate * 2}),
    Scenario("shadow", "a shadow stage rolls back a canary with longer, schema-breaking answers before "
             "it serves anyone", {"tokens_mean": CANARY.tokens_mean * 1.6, "schema_break_rate": 0.20},
             shadow=SHADOW_SHARE),
    Scenario("shadow-healthy", "the canary passes a shadow stage, then is promoted stage by stage",
             shadow=SHADOW_SHARE),
)}

# The demo's users rate this share of the answers (thumbs up or down) after a lognormal delay of
# median hold * FEEDBACK_DELAY; a stage waits FEEDBACK_SETTLE * hold for the ratings to arrive.
# Every answer: the demo's stages last seconds, and with half of them rated a loaded machine (CI)
# sometimes gave the judge too few ratings to tell 40% dislikes from 20% before the last stage.
FEEDBACK_SHARE = 1.0
FEEDBACK_DELAY = 0.1
FEEDBACK_SETTLE = 0.3
# The demo signs its feedback tokens with this fixed key; a real deployment reads its keys from
# the environment (`keys: ["${CANARYPROXY_FEEDBACK_KEY}"]`).
DEMO_FEEDBACK_KEY = "canaryproxy-demo-feedback-key-not-a-secret"

# The rollout the demo runs: the section to copy into a config. $-names are sized by `rollout_yaml`.
ROLLOUT_YAML = string.Template("""\
rollout:
  start: auto
  # The canary's share of the traffic, and how long each stage lasts at least. After the last
  # stage the canary is promoted to 100%: a stage at 100% would leave the rules that compare
  # with stable nothing to compare with.
  stages:
$stages
  # Canary requests a stage must see before it may advance (pairs compared, in a shadow stage).
  min_requests: $min_requests
  # A stage still without enough data after this long pauses the rollout.
  max_hold: $max_hold
  evaluate_every: $evaluate_every
  # How long after an answer its rating is expected to have arrived: a stage is not judged
  # healthy on ratings its users have not had time to give.
  feedback_settle: $settle
  rules:
    # More than 5% of canary requests fail.
    - name: errors
      metric: error_rate
      above: 0.05
      window: $window
      for: $for_
      min_samples: $min_samples
    # The canary's p95 latency is above 1.5x stable's over the same window.
    - name: latency
      metric: latency_p95
      above_stable: 1.5
      window: $window
      for: $for_
      min_samples: $min_samples
    # The canary's answers are 1.5x as long as stable's, in tokens.
    - name: tokens
      metric: output_tokens_per_request
      above_stable: 1.5
      window: $window
      for: $for_
      min_samples: $min_samples
    # A guardrail intervenes on more than 5% of the canary's answers.
    - name: guardrails
      metric: guardrail_rate
      above: 0.05
      window: $window
      for: $for_
      min_samples: $min_samples
    # More than 10% of the canary's structured outputs do not match their schema.
    - name: schema
      metric: schema_failure_rate
      above: 0.10
      window: $window
      for: $for_
      min_samples: $schema_min_samples
  # The sequential tests, canary against stable, after every request: 1% false-rollback budget.
  judge:
    enabled: true
    # After each weight rise the latency tests wait for cold instances to warm up (20 s by
    # default). The simulator has no cold start, and the demo's stages are short.
    warmup: $warmup
""")

# A shadow stage's section, for a plan that has one.
SHADOW_YAML = string.Template("""\
shadow:
  # A shadow stage advances once the paired tests show the canary no worse: for every compared
  # quantity, its odds of being the worse side of a pair are below `tolerance` (1.5x), or it is
  # the worse side in at most `negligible` more of the pairs than stable. The simulator draws
  # each answer's length and latency anew, so most pairs differ by chance, and showing the
  # default 1% takes tens of thousands of pairs; the demo's stages last seconds. A worse canary
  # is rolled back by the paired tests themselves, whatever this says.
  negligible: $negligible
  # Keep the texts of the differing pairs for the dashboard: the demo's users and answers are
  # made up. Off by default, so that no user's text is kept.
  keep_outputs: true
  # Copies pause while the proxy's process uses over 90% of its core (so that they take no time
  # the users' requests need); the demo's process runs the model servers and the users too, so
  # it watches only its event loop's lateness, and allows a little more of it than a proxy (its
  # one loop runs everything): a queue that grows runs hundreds of milliseconds late.
  max_cpu: null
  max_loop_lag: 25ms
""")
SHADOW_NEGLIGIBLE = 0.3

STRUCTURED_SHARE = 0.4  # share of demo requests asking for a json_schema answer
STREAMING_SHARE = 0.5
USERS = 3000


# The canary's weight in each live stage. A shadow scenario's plan starts with a shadow stage
# instead of the 5% one: a first look at the canary that costs no user anything, on more requests.
LIVE_STAGES = (5.0, 25.0, 50.0)
LIVE_STAGES_AFTER_SHADOW = (25.0, 50.0)
SHADOW_STAGE = string.Template("""\
    # A shadow stage: $share% of the requests are also sent to the canary, whose answers no user
    # sees; the two answers to each request are compared by the judge's paired tests.
    - {shadow: $share, hold: $hold}
""")


def _stages_yaml(hold: float, shadow: float) -> str:
    held = format_duration(hold)
    live = "\n".join(f"    - {{weight: {weight:g}, hold: {held}}}" for weight in _live_stages(shadow))
    return (SHADOW_STAGE.substitute(share=f"{shadow:g}", hold=held) if shadow else "") + live


def _live_stages(shadow: float) -> tuple[float, ...]:
    return LIVE_STAGES_AFTER_SHADOW if shadow else LIVE_STAGES


def rollout_yaml(rate: float, hold: float, shadow: float = 0.0) -> str:
    """The rollout section for `rate` requests/s and stage holds of `hold` seconds.

    A stage advances only when every rule passes, and a rule says nothing until its window holds
    `min_samples` canary samples, so the window must hold enough of the first live stage's canary
    traffic (5% of the rate; 25% after a shadow stage): 1.5x the time it takes to collect them,
    and at least a hold. 60 requests keep the errors rule quiet on a healthy 1% canary (3
    failures in 60 would already be 5%); schema failures have no such base rate, so 20
    structured outputs are enough.
    With `shadow`, the plan starts with a shadow stage copying that percent of the requests.
    """
    min_samples, schema_min_samples = 60, 20
    first_stage_rate = rate * _live_stages(shadow)[0] / 100
    collect = max(min_samples / first_stage_rate, schema_min_samples / (first_stage_rate * STRUCTURED_SHARE))
    window = max(hold, 1.5 * collect)
    evaluate_every = min(1.0, max(0.1, hold / 5))
    return ROLLOUT_YAML.substitute(
        stages=_stages_yaml(hold, shadow),
        hold=format_duration(hold),
        min_requests=max(10, round(first_stage_rate * hold / 2)),
        max_hold=format_duration(max(10 * hold, 4 * window)),
        evaluate_every=format_duration(evaluate_every),
        window=format_duration(window),
        for_=format_duration(max(hold / 2, 2 * evaluate_every)),
        min_samples=min_samples,
        schema_min_samples=schema_min_samples,
        warmup=format_duration(min(20.0, hold / 5)),
        settle=format_duration(FEEDBACK_SETTLE * hold),
    )


def demo_config_yaml(stable_url: str, canary_url: str, rate: float, hold: float, shadow: float = 0.0) -> str:
    """The whole proxy config of the demo: free loopback ports, the rollout of `rollout_yaml`
    (with a shadow stage copying `shadow` percent of the requests, and its `shadow` section)."""
    bucket = min(1.0, max(0.1, hold / 5))
    return f"""\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
upstreams:
  stable: {stable_url}
  canary: {canary_url}
routing:
  sticky: [header:x-user-id]
timeouts:
  drain: 1s              # Ctrl-C should not wait long
access_log: false
log_level: warning
windows:
  bucket: {format_duration(bucket)}      # fine enough for windows of a few seconds
# Users rate answers through the proxy's feedback endpoint, quoting the token of the answer.
feedback:
  enabled: true
  keys: ["{DEMO_FEEDBACK_KEY}"]
  # Every demo user posts from 127.0.0.1: one address, so the per-client limit is raised.
  rate_limit: {{rate: 5000, burst: 10000}}
# USD per million tokens, so that cost per request shows (and the judge tests it).
pricing:
  versions:
    stable: {{input: 0.5, output: 1.5}}
    canary: {{input: 0.5, output: 1.5}}
{SHADOW_YAML.substitute(negligible=f"{SHADOW_NEGLIGIBLE:g}") if shadow else ""}\
{rollout_yaml(rate, hold, shadow)}"""


# --- traffic ------------------------------------------------------------------------------------------

