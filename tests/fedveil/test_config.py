"""Configuration: validation, overrides, and the lossless Flower run_config mapping."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedveil.config import (
    Config,
    ConfigError,
    from_dict,
    from_run_config,
    load_config,
    reference_markdown,
    to_dict,
    to_flower_tables,
    to_run_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_equal_shipped_default_toml() -> None:
    assert load_config(ROOT / "configs" / "default.toml") == Config()


def test_pyproject_run_config_matches_defaults() -> None:
    """`flwr run .` (pyproject defaults) and `fedveil run` (dataclass defaults) are the same experiment."""
    app_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert from_dict(app_cfg) == Config()
    assert to_flower_tables(Config()) == app_cfg


def test_run_config_round_trip_is_lossless() -> None:
    cfg = load_config(None, ["federation.clients=7", "audit.kinds=['mia']", "audit.canary_repetitions=[2, 8]",
                             "he.enabled=true", "distill.beta=0.5", "run.name='x y'"])
    flat = to_run_config(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert from_run_config(flat) == cfg
    assert flat["audit.canary_repetitions"] == "2,8"


def test_overrides_and_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[federation]\nclients = 3\nmin_clients = 1\n[train]\nmethod = 'dp-sft'\n")
    cfg = load_config(f, ["federation.rounds=9"])
    assert (cfg.federation.clients, cfg.federation.rounds, cfg.train.method) == (3, 9, "dp-sft")


@pytest.mark.parametrize("override, needle", [
    ("federation.clientz=3", "unknown key 'federation.clientz'; allowed keys in [federation]: clients"),
    ("feder.clients=3", "unknown section [feder]"),
    ("train.method=dp-foo", "train.method = 'dp-foo' is not allowed; expected one of: dp-sft, dp-kd, dp-opd"),
    ("federation.rounds=0", "federation.rounds = 0 is not allowed"),
    ("federation.rounds=2.5", "federation.rounds = 2.5 is not allowed; expected an integer"),
    ("privacy.target_epsilon=true", "privacy.target_epsilon = True is not allowed"),
    ("he.enabled=1", "he.enabled = 1 is not allowed; expected a boolean"),
    ("audit.kinds=['exposure','nope']", "audit.kinds contains 'nope'"),
    ("federation.min_clients=9", "federation.min_clients = 9 is not allowed"),
    ("noequals", "expected section.key=value"),
])
def test_errors_name_key_value_and_allowed(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_run_config_key_is_rejected() -> None:
    flat = to_run_config(Config())
    flat["train.nope"] = 1
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        from_run_config(flat)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.federation.clients = 2  # type: ignore[misc]


def test_reference_lists_every_key() -> None:
    ref = reference_markdown()
    for sec, body in to_dict(Config()).items():
        for key in body:
            assert f"`{sec}.{key}`" in ref
