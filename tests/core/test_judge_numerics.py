"""The judge's numerics against reference numbers computed with scipy.
"""

from __future__ import annotations

import math

import pytest

from canaryproxy.core.judge import log_normal_cdf, mixture_precision, normal_mixture_log_e


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "expected"),
    [  # scipy.special.log_ndtr(z)
        (-40.0, -804.6084420137539),
        (-30.5, -469.4627373229121),
        (-29.5, -439.4294746091503),
        (-5.0, -15.064998393988727),
        (0.0, -0.6931471805599453),
        (3.0, -0.0013508099647481925),
        (10.0, -7.61985302416047e-24),
    ],
)
def test_log_normal_cdf_matches_scipy(z: float, expected: float) -> None:
    assert log_normal_cdf(z) == pytest.approx(expected, rel=1e-13)


def test_log_normal_cdf_keeps_precision_far_below_underflow() -> None:
    # log(0.5 * erfc(40 / sqrt(2))) is log 0: the series must take over.
    assert math.erfc(1000 / math.sqrt(2)) == 0.0
    # scipy.special.log_ndtr(-1000)
    assert log_normal_cdf(-1000.0) == pytest.approx(-500007.8266948122, rel=1e-15)


@pytest.mark.parametrize(
    ("s", "v", "rho", "expected"),
    [  # log quad(lambda t: exp(t*s - t*t*v/2) * 2*sqrt(rho/(2*pi)) * exp(-rho*t*t/2), 0, inf)
        (50.0, 400.0, 48.45, 2.3587411531324847),
        (-20.0, 400.0, 48.45, -1.7310180802980535),
        (3.0, 10.0, 2.0, -0.04245927074146395),
    ],
)
def test_normal_mixture_closed_form_matches_numerical_integration(
    s: float, v: float, rho: float, expected: float
) -> None:
    assert normal_mixture_log_e(s, v, rho) == pytest.approx(expected, rel=1e-12)


def test_mixture_precision_by_hand() -> None:
    # L = log(1000); (200 / 0.25) / (2L + log(1 + 2L)) = 800 / 16.5112... = 48.452
    assert mixture_precision(0.25, 0.001) == pytest.approx(48.45200331043356, rel=1e-14)
