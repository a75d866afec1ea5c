"""fedveil.wire: typed reads of Flower record values refuse what a peer should not have sent."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, MetricRecord

from fedveil.wire import WireTypeError, as_float, as_int, as_str, float_or, int_or, str_or


def test_scalars_are_read_with_their_type() -> None:
    m = MetricRecord({"steps": 7, "epsilon": 1.5, "whole": 3.0})
    assert as_int(m, "steps") == 7 and isinstance(as_int(m, "steps"), int)
    assert as_float(m, "epsilon") == 1.5 and as_float(m, "steps") == 7.0
    assert as_int(m, "whole") == 3  # an integral float is an integer
    c = ConfigRecord({"accountant": "rdp"})
    assert as_str(c, "accountant") == "rdp"
    assert str_or(c, "missing", "prv") == "prv" and int_or(m, "missing", -1) == -1
    assert float_or(m, "missing", 0.25) == 0.25


@pytest.mark.parametrize(("record", "key", "reader"), [
    (MetricRecord({"steps": [1, 2]}), "steps", as_int),       # a list where a scalar belongs
    (MetricRecord({"steps": 2.5}), "steps", as_int),          # a fraction of a step
    (ConfigRecord({"dp": True}), "dp", as_int),               # booleans are not counts
    (ConfigRecord({"dp": True}), "dp", as_float),
    (ConfigRecord({"epsilon": "1.0"}), "epsilon", as_float),  # a numeric string is still a string
    (ConfigRecord({"accountant": 3}), "accountant", as_str),
])
def test_wrong_types_name_the_key(record: MetricRecord | ConfigRecord, key: str, reader: object) -> None:
    with pytest.raises(WireTypeError, match=repr(key)):
        reader(record, key)  # type: ignore[operator]


def test_missing_key_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        as_float(MetricRecord({}), "epsilon")
