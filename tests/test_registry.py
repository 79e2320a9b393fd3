"""The one Registry class (methods, datasets, protocols, built-in weights), the training regimes, and the
plugin entry points the mini world registers through."""

from __future__ import annotations

import pytest

from clipfit.errors import ClipFitError
from clipfit.methods import METHODS, NO_TRAINING, Regime, method_regime
from clipfit.plugins import COMMANDS, COMMANDS_GROUP, GROUP
from clipfit.protocols import PROTOCOLS
from clipfit.registry import Registry

pytestmark = pytest.mark.contract


def test_a_name_taken_by_another_entry_is_refused_and_the_same_entry_again_is_not():
    registry = Registry("widget")
    first = object()
    assert registry.register("a", first) is first
    assert registry.register("a", first) is first
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a", object())


def test_the_listing_order_is_the_given_order_then_alphabetical_not_registration_order():
    registry = Registry("widget", order=("zeta", "alpha"))
    for name in ("mu", "alpha", "beta", "zeta"):
        registry.register(name, name.upper())
    assert list(registry) == ["zeta", "alpha", "beta", "mu"]
    assert registry.unregister("beta") == "BETA" and list(registry) == ["zeta", "alpha", "mu"]


def test_an_unknown_name_names_the_close_matches_and_the_known_ones():
    registry = Registry("widget", error=ClipFitError)
    registry.register("clipfit", 1)
    with pytest.raises(ClipFitError, match=r"unknown widget 'clipfti' \(did you mean clipfit\?\); known: clipfit"):
        registry.lookup("clipfti")


def test_the_built_in_registries_list_in_their_declared_order():
    assert list(METHODS)[:3] == ["clipfit", "bitfit-all", "bitfit-text"]
    assert list(PROTOCOLS) == ["few-shot", "base2new"]
    assert PROTOCOLS["base2new"].evaluates_unseen and not PROTOCOLS["few-shot"].evaluates_unseen


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_names_one_regime(method):
    regime = method_regime(method)
    assert isinstance(regime, Regime)
    assert (regime is NO_TRAINING) == (method == "zeroshot")
    assert regime.trains == (method != "zeroshot")


def test_the_regimes_of_the_frozen_feature_family_are_their_papers():
    assert method_regime("linear-probe") == Regime(fit=True, optimise=None, views=0)
    assert method_regime("tip-adapter") == Regime(fit=True, optimise=None, views=10)
    assert method_regime("tip-adapter-f") == Regime(fit=True, optimise="features", views=10)
    assert method_regime("tip-adapter-f", {"augmentation": "fresh"}) == Regime(fit=True, optimise="images", views=10)
    assert method_regime("clip-adapter") == Regime(optimise="features", views=10)
    assert method_regime("clip-adapter+ln") == Regime()
    assert str(method_regime("tip-adapter-f")) == "fit, then optimise on features"


def test_a_regime_that_reads_stored_features_must_say_how_many_views():
    with pytest.raises(ValueError, match="names its views"):
        Regime(optimise="features")
    with pytest.raises(ValueError, match="must be None or one of"):
        Regime(optimise="pixels")


def test_the_mini_world_registers_through_both_entry_point_groups():
    from importlib.metadata import entry_points

    assert {p.value for p in entry_points(group=GROUP)} >= {"clipfit_world.plugin:register"}
    assert {p.value for p in entry_points(group=COMMANDS_GROUP)} >= {"clipfit_world.commands:register"}
    from clipfit.cli import build_parser

    build_parser()
    assert {"demo", "table mini-world", "table recipes"} <= set(COMMANDS)
