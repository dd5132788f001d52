"""Physics regimes of the synthetic generator: published forms, nuisances, held-out sets."""

from __future__ import annotations

import numpy as np
import pytest

from seismag.training.regimes import (
    HELD_OUT_REGIMES,
    REGIMES,
    TRAIN_REGIMES,
    WNA,
    Physics,
    draw_event_physics,
    piecewise_linear,
    piecewise_power,
    regime_names,
    site_kappa0,
    site_vs30,
)
from seismag.training.synthetic import (
    geometric_spreading,
    regime_config,
    simulate_event,
    velocity_spectrum,
)


def test_piecewise_laws_are_continuous_and_match_the_published_forms():
    ena = draw_event_physics(np.random.default_rng(0), "ena").physics
    r = np.array([10.0, 70.0, 100.0, 140.0, 200.0])
    z = geometric_spreading(r, ena)
    # Atkinson & Boore (2006): R^-1.3 to 70 km, R^+0.2 to 140 km, R^-0.5 beyond.
    assert z[0] == pytest.approx(10**-1.3)
    assert z[1] == pytest.approx(70**-1.3)
    assert z[3] == pytest.approx(70**-1.3 * 2**0.2)
    assert z[4] == pytest.approx(z[3] * (200 / 140) ** -0.5)
    # WNA (Boore 2003): 1/R to 40 km, then R^-0.5.
    assert geometric_spreading(np.array([40.0, 160.0]), WNA) == pytest.approx([1 / 40, 1 / 80])
    eps = 1e-9
    for segs in (ena.spreading, WNA.spreading):
        for hinge, _ in segs[:-1]:
            lo, hi = piecewise_power(np.array([hinge - eps, hinge + eps]), segs)
            assert lo == pytest.approx(hi, rel=1e-6)
    dur = piecewise_linear(np.array([70.0, 130.0, 200.0]), ena.duration_path)
    assert dur == pytest.approx([11.2, 11.2 - 1.8, 9.4 + 2.8])


def test_regimes_differ_where_the_literature_says():
    f = np.array([1.0, 10.0])
    rng = np.random.default_rng(1)
    spec = {}
    for name in ("ena", "high_attenuation"):
        d = draw_event_physics(rng, name)
        kappa = d.kappa_median_s
        spec[name] = velocity_spectrum(
            f, 4.0, 100.0, stress_drop_bar=d.stress_drop_bar, kappa_s=kappa, physics=d.physics
        )
    # Hard-rock, high-Q ENA keeps far more 10 Hz energy at 100 km than a low-Q, high-kappa crust.
    ratio = lambda s: s[1] / s[0]  # noqa: E731
    assert ratio(spec["ena"]) > 30 * ratio(spec["high_attenuation"])


def test_regime_names_and_errors():
    assert regime_names("train") == TRAIN_REGIMES
    assert regime_names("held-out") == HELD_OUT_REGIMES
    assert regime_names("all") == tuple(REGIMES)
    assert regime_names("ena, wna") == ("ena", "wna")
    assert not set(TRAIN_REGIMES) & set(HELD_OUT_REGIMES)
    with pytest.raises(ValueError, match="unknown regime"):
        regime_names("mars")
    with pytest.raises(ValueError, match="unknown regime"):
        draw_event_physics(np.random.default_rng(0), "mars")
    with pytest.raises(ValueError, match="unknown source"):
        velocity_spectrum(np.ones(1), 3.0, 10.0, physics=Physics(source="three_corner"))


def test_regime_events_carry_instruments_layout_and_are_deterministic():
    config = regime_config(("broad", "ena"))
    rows, waves = [], []
    for i in range(12):
        rec = simulate_event(5, i, config)
        rows += rec.metadata
        waves.append(rec.waveforms)
    again = simulate_event(5, 3, config)
    assert np.array_equal(again.waveforms, waves[3])
    assert {r["source_regime"] for r in rows} == {"broad", "ena"}
    assert {r["station_instrument"] for r in rows} >= {"broadband"}
    for r, w in zip(rows, np.concatenate(waves), strict=True):
        assert r["trace_p_arrival_sample"] >= 200  # P from 2 s into the record
        assert r["trace_channel"] in ("HH", "EH", "HN")
        assert np.isfinite(w).all()
        assert r["trace_snr_db"] >= config.snr_min_db
    # S may lie after the record end; P never does.
    assert max(r["trace_p_arrival_sample"] for r in rows) < 6000


def test_wide_regime_spans_the_published_ranges_of_single_parameters():
    rng = np.random.default_rng(3)
    drawn = [draw_event_physics(rng, "wide") for _ in range(3000)]
    stress = np.array([d.stress_drop_bar for d in drawn])
    kappa = np.array([d.kappa_median_s for d in drawn])
    q0 = np.array([d.physics.q0 for d in drawn])
    # The ranges the literature gives (stress drop ~1-300 bar, kappa ~0.005-0.08 s, Q0 of
    # volcanic basins to cratons), reached at both ends.
    assert 1.0 <= stress.min() < 1.2 and 250 < stress.max() <= 300.0
    assert 0.005 <= kappa.min() < 0.006 and 0.07 < kappa.max() <= 0.08
    assert 40.0 <= q0.min() < 45.0 and 900 < q0.max() <= 1000.0
    trilinear = [d.physics.spreading for d in drawn if len(d.physics.spreading) == 3]
    assert 0.25 < len(trilinear) / len(drawn) < 0.42
    for segs in trilinear[:20]:  # continuous at both hinges, hinges increasing
        assert segs[0][0] < segs[1][0]
        for hinge, _ in segs[:-1]:
            lo, hi = piecewise_power(np.array([hinge - 1e-9, hinge + 1e-9]), segs)
            assert lo == pytest.approx(hi, rel=1e-6)


def test_site_kappa_ties_kappa_to_the_sites_amplification():
    """Hard-rock sites (no amplification) get low kappa and soft ones high, on Van Houtte et
    al. (2011)'s Vs30 relation, so a record's high-frequency decay carries the site."""
    assert site_kappa0(620.0) == pytest.approx(0.035, abs=0.001)  # Boore & Joyner's generic rock
    assert site_kappa0(site_vs30(0.0)) == pytest.approx(0.0056, abs=0.0005)
    assert site_vs30(1.0) == pytest.approx(620.0)
    rng = np.random.default_rng(3)
    drawn = [draw_event_physics(rng, "site_kappa") for _ in range(600)]
    at_6hz = np.log([dict(d.physics.crust_amplification)[6.05] for d in drawn])
    kappa = np.log([d.kappa_median_s for d in drawn])
    assert np.corrcoef(at_6hz, kappa)[0, 1] > 0.85
    hard = kappa[at_6hz < 0.1 * np.log(2.58)]
    soft = kappa[at_6hz > 1.3 * np.log(2.58)]
    assert np.exp(np.median(hard)) < 0.009 and np.exp(np.median(soft)) > 0.05
    # site_range keeps its kappa independent of the site (the weights trained on it say so)
    other = [draw_event_physics(rng, "site_range") for _ in range(600)]
    amp = np.log([dict(d.physics.crust_amplification)[6.05] for d in other])
    assert abs(np.corrcoef(amp, np.log([d.kappa_median_s for d in other]))[0, 1]) < 0.15
