"""The sequential statistical judge: is the canary worse than stable? Anytime-valid.

Both versions serve the same traffic at the same time: the splitter sends each user (sticky key)
to the canary with probability w, the canary weight. The judge compares them after every request
and says FAIL as soon as the evidence that the canary is worse is strong, while the chance of a
false rollback stays below α however often it is looked at: each test is an e-process (a
nonnegative supermartingale under "the canary is no worse") and Ville's inequality bounds the
chance it ever reaches 1/α by α. The formulas are in decision-engine.md, section 2.

Two kinds of tests
------------------
*Event tests* (conditional-label mixture, events.py; O(1) per request and O(J) per block of
requests with an event, J alternatives): failed requests (`errors`), requests slower than stable's
p95 (`latency`) and than stable's p99 (`latency_tail`), both fixed before the test looks,
guardrail interventions (`guardrail`), schema failures (`schema`), truncated responses
(`truncation`). With feedback on (`JudgeConfig.feedback`), two more run on late feedback records
(feedback.py, `observe_feedback`): negative user feedback (`negative_feedback`) and downstream
failures (`downstream_errors`), labelled against the canary's share at routing.

*Amount tests* (normal mixture on x = log(1 + y), amounts.py; O(1) per request): tokens per
request (`tokens`, prompt plus completion), output length in characters (`output_length`), cost
(`cost`, in micro-USD) and latency (`log_latency`, in milliseconds).

*Paired tests* (paired.py, shadow stages only): sign tests on pairs — one request answered by
stable and by the canary in the shadow (`observe_pair`) — failures, schema failures, guardrail
interventions, truncation, completion tokens, output length, latency, TTFT; a family of their own.

The modules
-----------
* `config`: the settings, the α split and its validation;
* `intake` (with `blocks` and `keycap`): what each request counts for — eligibility, side, the
  warm-up, the per-key caps, the latency thresholds, each event test's blocks — emitting closed
  blocks and amount samples;
* `events` and `amounts`: the evidence, folded from what the intake emits;
* `feedback`: the feedback tests' intake (shares per weight at routing, key caps) and settling;
* `judge`: the `Judge` that joins them, and saves and restores its state (`state`);
* `numerics`: the arithmetic, checked against reference numbers.

The intake is apart from the evidence so that evidence composes: with several processes the
leader runs one intake over every process's per-request records and folds into one evidence, and
a new leader restores the evidence from the saved state. Measured figures behind the design
choices (false-rollback rates, the price of the per-key cap and of the warm-up tolerance) are in
bench/README.md, "The judge's design figures"; the docstrings keep the reasoning.
"""

from canaryproxy.core.judge.amounts import AmountEvidence
from canaryproxy.core.judge.blocks import BLOCK_REQUESTS, EVENT_KINDS, Block, Events, EventSeen
from canaryproxy.core.judge.config import (
    AMOUNT_TESTS,
    DEFAULT_FEEDBACK_SETTLE,
    DEFAULT_TESTS,
    EVENT_TESTS,
    FEEDBACK_DEFAULT_TESTS,
    FEEDBACK_TESTS,
    LATENCY_EVENT_TESTS,
    PAIRED_TESTS,
    WARM_UP_TESTS,
    JudgeConfig,
    PairedTestConfig,
    TestConfig,
    default_tests,
)
from canaryproxy.core.judge.events import CS_GRID, EventEvidence
from canaryproxy.core.judge.feedback import TEST_OF_KIND, RoutedShares
from canaryproxy.core.judge.intake import AMOUNT_KINDS, Amounts, EvidenceSink, Intake
from canaryproxy.core.judge.judge import Judge
from canaryproxy.core.judge.keycap import KeyCap
from canaryproxy.core.judge.paired import PairedTests
from canaryproxy.core.judge.numerics import (
    canary_share,
    e_value,
    format_e,
    geometric_range,
    log_likelihood_ratios,
    log_mean_exp,
    log_mixture,
    log_normal_cdf,
    mixture_log_weights,
    mixture_precision,
    normal_mixture_log_e,
    ratio_estimate,
)

__all__ = [
    "AMOUNT_KINDS", "AMOUNT_TESTS", "Amounts", "BLOCK_REQUESTS", "CS_GRID", "DEFAULT_FEEDBACK_SETTLE",
    "DEFAULT_TESTS", "EVENT_KINDS", "EVENT_TESTS", "FEEDBACK_DEFAULT_TESTS", "FEEDBACK_TESTS", "TEST_OF_KIND",
    "RoutedShares", "default_tests", "Events", "LATENCY_EVENT_TESTS", "WARM_UP_TESTS", "AmountEvidence", "Block",
    "EventEvidence", "EventSeen", "EvidenceSink", "Intake", "Judge", "JudgeConfig", "KeyCap", "PAIRED_TESTS", "PairedTestConfig", "PairedTests", "TestConfig",
    "canary_share", "e_value", "format_e", "geometric_range", "log_likelihood_ratios", "log_mean_exp",
    "log_mixture", "log_normal_cdf", "mixture_log_weights", "mixture_precision", "normal_mixture_log_e",
    "ratio_estimate",
]  # fmt: skip
