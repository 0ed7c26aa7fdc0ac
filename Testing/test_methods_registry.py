"""The method registry: names, duplicates, typos, parameters."""

from __future__ import annotations

import pytest

from MedFusionLib.errors import InvalidInputError, UnknownOptionError
from MedFusionLib.methods import METHODS, MethodRegistry, default_method, get_method, list_methods


def test_builtin_methods_are_listed_sorted():
    names = list_methods()
    assert names == sorted(names)
    assert {"average", "maximum", "pca"} <= set(names)
    details = list_methods(details=True)
    assert details["maximum"].title == "Pixel maximum" and details["maximum"].provides_weights


def test_default_method_is_cnn_when_registered():
    expected = "cnn" if "cnn" in METHODS and METHODS["cnn"].available else "maximum"
    assert default_method() == expected


def test_lookup_is_case_insensitive_and_suggests():
    assert get_method(" Maximum ").name == "maximum"
    with pytest.raises(UnknownOptionError, match="Did you mean 'average'") as exc:
        get_method("avrage")
    assert "Available:" in str(exc.value)


def test_duplicate_registration_raises():
    reg = MethodRegistry()

    @reg.register("x", title="X")
    def x(a, b, *, device="cpu"):
        return a

    with pytest.raises(ValueError, match="already registered under the name 'x'"):
        reg.register("X", title="again")(x)


def test_parameters_are_read_from_the_signature_and_validated():
    reg = MethodRegistry()

    @reg.register("y", title="Y")
    def y(a, b, *, device="cpu", alpha=0.5, return_weights=False):
        return a

    info = reg["y"]
    assert info.params == {"alpha": 0.5}
    assert info.validate_params({"alpha": 0.1}) == {"alpha": 0.1}
    with pytest.raises(InvalidInputError, match="has no parameter 'beta'; its parameters are: alpha"):
        info.validate_params({"beta": 1})
