"""KL-coefficient controllers: hand-worked updates of the adaptive β, the fixed β, state round trips."""

from __future__ import annotations

import pytest

from r2m.core.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller


def _adaptive() -> AdaptiveKLController:
    # SER's PPO defaults: β₀ = 0.2, target KL 0.1; a batch of 1000 samples over a 10000 horizon.
    return AdaptiveKLController(init_kl_coef=0.2, target=0.1, horizon=10000)


def test_adaptive_goes_up_when_kl_above_target() -> None:
    ctl = _adaptive()
    # e = 0.11 / 0.1 − 1 = 0.1 (inside the clip); mult = 1 + 0.1 · 1000 / 10000 = 1.01
    ctl.update(current_kl=0.11, n_steps=1000)
    assert ctl.value == pytest.approx(0.2 * 1.01)  # 0.202


def test_adaptive_goes_down_when_kl_below_target() -> None:
    ctl = _adaptive()
    # e = 0.09 / 0.1 − 1 = −0.1; mult = 1 − 0.1 · 0.1 = 0.99
    ctl.update(current_kl=0.09, n_steps=1000)
    assert ctl.value == pytest.approx(0.2 * 0.99)  # 0.198


def test_adaptive_stays_at_target() -> None:
    ctl = _adaptive()
    ctl.update(current_kl=0.1, n_steps=1000)
    assert ctl.value == pytest.approx(0.2)


def test_adaptive_clips_the_proportional_error() -> None:
    up = _adaptive()
    # e = 1.0 / 0.1 − 1 = 9, clipped to 0.2; mult = 1 + 0.2 · 0.1 = 1.02
    up.update(current_kl=1.0, n_steps=1000)
    assert up.value == pytest.approx(0.2 * 1.02)  # 0.204
    down = _adaptive()
    # e = 0 / 0.1 − 1 = −1, clipped to −0.2; mult = 0.98
    down.update(current_kl=0.0, n_steps=1000)
    assert down.value == pytest.approx(0.2 * 0.98)  # 0.196
    # n_steps = horizon: the full clipped error in one update, mult = 1.2
    full = _adaptive()
    full.update(current_kl=5.0, n_steps=10000)
    assert full.value == pytest.approx(0.24)


def test_adaptive_compounds_over_updates() -> None:
    ctl = _adaptive()
    ctl.update(0.11, 1000)  # × 1.01
    ctl.update(0.09, 1000)  # × 0.99
    ctl.update(1.00, 1000)  # × 1.02
    assert ctl.value == pytest.approx(0.2 * 1.01 * 0.99 * 1.02)


def test_adaptive_rejects_bad_settings_and_nan_kl() -> None:
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.2, target=0.0, horizon=10000)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.2, target=0.1, horizon=0)
    with pytest.raises(ValueError, match="init_kl_coef"):
        AdaptiveKLController(-0.1, target=0.1, horizon=10)
    ctl = _adaptive()
    with pytest.raises(ValueError, match="finite"):
        ctl.update(float("nan"), 1000)
    assert ctl.value == 0.2


def test_adaptive_beta_stops_at_zero() -> None:
    """n_steps > 5 * horizon below the target makes the multiplier negative; beta stops at 0 and stays there.
    beta0 = 0.2, target 0.1, horizon 100, n = 1000:
    KL 0.09: e = -0.1, mult = 1 - 0.1 * 10 = 0 -> 0.2 * 0 = 0
    restart at 0.2, KL 0.0: e = -0.2, mult = 1 - 0.2 * 10 = -1 -> max(0, -0.2) = 0; then KL 0.2: e = +0.2,
    mult = 3, 0 * 3 = 0."""
    ctl = AdaptiveKLController(0.2, target=0.1, horizon=100)
    ctl.update(0.09, 1000)
    assert ctl.value == 0.0
    ctl = AdaptiveKLController(0.2, target=0.1, horizon=100)
    ctl.update(0.0, 1000)
    assert ctl.value == 0.0 and not str(ctl.value).startswith("-")
    ctl.update(0.2, 1000)
    assert ctl.value == 0.0
    ok = AdaptiveKLController(0.2, target=0.1, horizon=100)
    ok.update(0.09, 100)  # e = -0.1, mult = 0.9
    ok.update(0.0, 200)  # e = -0.2, mult = 1 - 0.4 = 0.6
    assert ok.value == pytest.approx(0.2 * 0.9 * 0.6)  # 0.108: inside the range the clamp leaves alone


def test_fixed_never_moves() -> None:
    ctl = FixedKLController(0.05)
    for kl in (0.0, 0.1, 10.0, 1e6):
        ctl.update(kl, 10000)
    assert ctl.value == 0.05


def test_state_round_trip() -> None:
    ctl = _adaptive()
    ctl.update(0.3, 4000)
    resumed = _adaptive()
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value != 0.2
    ctl.update(0.05, 1000)
    resumed.update(0.05, 1000)
    assert resumed.value == ctl.value

    fixed = FixedKLController(0.3)
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.3


def test_state_of_the_other_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="adaptive"):
        _adaptive().load_state_dict(FixedKLController(0.1).state_dict())
    with pytest.raises(ValueError, match="fixed"):
        FixedKLController(0.1).load_state_dict(_adaptive().state_dict())


def test_factory() -> None:
    fixed = make_kl_controller(0.05, adaptive=False, target=0.1, horizon=10000)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.05
    adaptive = make_kl_controller(0.2, adaptive=True, target=0.1, horizon=10000)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.2, 0.1, 10000)
