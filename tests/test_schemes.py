import pytest

from bnorder.nets.schemes import Scheme, describe, parse_scheme


def test_parse_returns_the_order_given() -> None:
    assert parse_scheme(["act", "dropout", "bn"]) == ("act", "dropout", "bn")
    assert parse_scheme([]) == ()


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (["bn", "relu"], "unknown token 'relu'"),
        (["bn", "bn"], "token 'bn' appears twice"),
        ("bn", "expected a list of tokens"),
        (None, "expected a list of tokens"),
    ],
)
def test_bad_schemes(ops: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scheme(ops)  # type: ignore[arg-type]


def test_describe_reads_like_the_papers() -> None:
    assert describe(Scheme(("bn", "act", "dropout"))) == "CONV → BN → ACT → DROPOUT"
