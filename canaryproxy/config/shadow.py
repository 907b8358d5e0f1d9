"""The `shadow` section: how the proxy sends the shadow copies of a shadow stage, and when the
paired tests count the canary as no worse. Used only by a plan with shadow stages
(`rollout.stages: [{shadow: 20, hold: 10m}, ...]`); the defaults suit most.

    shadow:
      max_in_flight: 64          # copies running at once; beyond that new ones are dropped, counted
      max_response_bytes: 4MiB   # read of one shadow answer; beyond that its pair is dropped
      tolerance: 1.5             # "no worse": canary the worse side at most 1.5x as often as stable,
      negligible: 0.01           # or worse in at most 1% more of the pairs than stable
      samples: 20                # differing pairs kept for `canaryproxy status` and the dashboard
      keep_outputs: false        # keep those pairs' two texts too (off: no user text is kept)
      max_loop_lag: 10ms         # the event loop this late: copies pause, overlapping pairs dropped
      max_cpu: 0.9               # the process using this share of its core: copies pause (null: never)

What the shadow holds is bounded by max_in_flight x max_response_bytes (256 MiB at the defaults,
for 64 answers of 4 MiB each at once; LLM answers are kilobytes).
"""

from __future__ import annotations

from pydantic import Field

from canaryproxy.config.fields import Duration, Size, Strict
from canaryproxy.proxy.shadow import ShadowSettings


class ShadowConfig(Strict):
    max_in_flight: int = Field(default=64, ge=1, le=100_000)
    max_response_bytes: Size = Field(default=4 * 1024**2, ge=1024)
    tolerance: float = Field(default=1.5, gt=1.0, le=100.0)
    negligible: float = Field(default=0.01, gt=0.0, lt=1.0)
    samples: int = Field(default=20, ge=0, le=1000)
    keep_outputs: bool = False
    sample_chars: int = Field(default=2000, ge=1, le=100_000)
    # An overloaded proxy times a copy (sent after the user's answer) on a longer queue than the
    # request it copies: judging it would roll back a healthy canary (proxy/overload.py). 0: off.
    max_loop_lag: Duration = Field(default=0.01, ge=0)
    # A copy costs about what its request does: at a full core it takes time the users' requests
    # need. Copies use the capacity left below this share of one core. None: no limit.
    max_cpu: float | None = Field(default=0.9, gt=0.0, le=1.0)

    def to_settings(self) -> ShadowSettings:
        return ShadowSettings(max_in_flight=self.max_in_flight, max_response_bytes=self.max_response_bytes,
                              samples=self.samples, keep_outputs=self.keep_outputs,
                              sample_chars=self.sample_chars, max_loop_lag=self.max_loop_lag,
                              max_cpu=self.max_cpu)
