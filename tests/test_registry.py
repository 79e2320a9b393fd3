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


def test_an_alias_finds_its_entry_everywhere_a_name_is_looked_up_and_is_listed_apart():
    registry = Registry("widget", error=ClipFitError)
    registry.register("canonical", "ENTRY")
    registry.register("other", "OTHER")
    registry.register_alias("Typo-Name", "canonical")
    registry.register_alias("typo-name", "canonical")
    registry.register_alias("typo-name", "canonical")  # the same alias again: a no-op
    assert registry.lookup("Typo-Name") == registry["typo-name"] == registry.get("typo-name") == "ENTRY"
    assert "typo-name" in registry and "nothing" not in registry and registry.get("nothing") is None
    assert registry.resolve("typo-name") == "canonical" and registry.resolve("unknown") == "unknown"
    assert list(registry) == ["canonical", "other"] and len(registry) == 2 and list(registry.keys()) == list(registry)
    assert registry.aliases() == {"Typo-Name": "canonical", "typo-name": "canonical"}


def test_an_alias_must_name_a_registered_entry_and_never_takes_a_name_or_another_alias():
    registry = Registry("widget")
    registry.register("a", 1)
    registry.register("b", 2)
    registry.register_alias("x", "a")
    with pytest.raises(ValueError, match="widget 'nope' is not registered"):
        registry.register_alias("y", "nope")
    with pytest.raises(ValueError, match="'x' is not registered"):
        registry.register_alias("y", "x")  # an alias of an alias
    with pytest.raises(ValueError, match="registered under that name"):
        registry.register_alias("b", "a")
    with pytest.raises(ValueError, match="already stands for widget 'a'"):
        registry.register_alias("x", "b")
    with pytest.raises(ValueError, match="widget 'x' is already an alias of 'a'"):
        registry.register("x", 3)


def test_removing_an_entry_removes_its_aliases_and_removing_an_alias_keeps_the_entry():
    registry = Registry("widget")
    registry.register("a", 1)
    registry.register_alias("x", "a")
    registry.register_alias("y", "a")
    assert registry.unregister("x") == 1 and registry.aliases() == {"y": "a"} and "a" in registry
    assert registry.unregister("a") == 1 and registry.aliases() == {} and "y" not in registry


def test_an_unknown_name_suggests_close_aliases_too():
    registry = Registry("widget", error=ClipFitError)
    registry.register("vtab-dtd", 1)
    registry.register_alias("vtba-dtd", "vtab-dtd")
    with pytest.raises(ClipFitError, match=r"unknown widget 'vtba-dt' \(did you mean vtba-dtd, vtab-dtd\?\)"):
        registry.lookup("vtba-dt")


def test_aliases_list_in_the_order_of_their_entries_and_extend_order_appends_names():
    registry = Registry("widget", order=("z",))
    for name in ("a", "m", "z"):
        registry.register(name, name)
    registry.extend_order(["m", "z"])
    assert list(registry) == ["z", "m", "a"]
    registry.register_alias("alias-of-a", "a")
    registry.register_alias("alias-of-z", "z")
    registry.register_alias("b-alias-of-m", "m")
    assert list(registry.aliases()) == ["alias-of-z", "b-alias-of-m", "alias-of-a"]


def test_the_built_in_registries_list_in_their_declared_order():
    assert list(METHODS)[:3] == ["clipfit", "bitfit-all", "bitfit-text"]
    assert list(PROTOCOLS) == ["few-shot", "base2new", "cross-dataset", "distribution-shift", "vtab"]
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
