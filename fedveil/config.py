"""Configuration: one TOML schema parsed once into frozen, validated dataclasses.

Sources, in order of precedence (later wins):

1. the dataclass defaults below (mirrored by ``configs/default.toml``),
2. a TOML file (``fedveil run -c FILE``),
3. ``--set section.key=value`` overrides.

The same configuration travels through Flower as a flat ``run_config``
(``{"federation.clients": 4, ...}``); :func:`to_run_config` and
:func:`from_run_config` convert losslessly so that ``flwr run .`` and
``fedveil run`` run the same experiment. Lists, which Flower's run config
cannot carry, travel as comma-separated strings.

Every error names the key, the offending value and what is allowed, and is
raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Scalar = bool | int | float | str
#: Built-in model presets (their sizes live in distill.models.PRESETS).
MODEL_PRESETS = ("student-xs", "student-s", "teacher-s")


class ConfigError(ValueError):
    """A configuration key or value is not allowed."""


def _opt(default: Any, help: str, *, choices: Sequence[Any] | None = None,
         lo: float | None = None, hi: float | None = None) -> Any:
    """Declare a configuration field with its documentation and constraints."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "lo": lo, "hi": hi}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FederationConfig:
    """How many clients, rounds and how a round is run."""

    clients: int = _opt(4, "number of simulated clients (SuperNodes)", lo=1, hi=10_000)
    rounds: int = _opt(4, "federated rounds", lo=1, hi=100_000)
    fraction_train: float = _opt(1.0, "fraction of clients sampled per round", lo=0.0, hi=1.0)
    min_clients: int = _opt(2, "minimum replies for a round to count", lo=1)
    round_timeout: float = _opt(900.0, "seconds to wait for replies in a round", lo=1.0)
    cpus_per_client: float = _opt(1.0, "CPU cores reserved per simulated client", lo=0.1)
    max_payload_mb: float = _opt(256.0, "largest accepted client payload (MiB)", lo=0.001)
    aggregator: str = _opt("mean", "plaintext aggregation rule (median / trimmed-mean bound one bad client; "
                           "HE runs use mean)", choices=("mean", "median", "trimmed-mean"))
    trim_fraction: float = _opt(0.2, "share of replies trimmed at each end by trimmed-mean (at least one)",
                                lo=0.0, hi=0.49)


@dataclass(frozen=True)
class DataConfig:
    """Where private, public and held-out data come from."""

    task: str = _opt("synthetic-text", "data set / task",
                     choices=("synthetic-text", "text-file", "digits"))
    kind: str = _opt("clinical", "kind of synthetic private record", choices=("clinical", "support"))
    records_per_client: int = _opt(160, "private records per client (synthetic)", lo=1)
    public_records: int = _opt(1500, "public (PII-free) records for the tokenizer and teacher", lo=10)
    heldout_records: int = _opt(200, "held-out records for perplexity", lo=1)
    path: str = _opt("", "private corpus file (.txt/.jsonl/.csv) for task=text-file")
    heldout_path: str = _opt("", "held-out corpus file for task=text-file")
    field: str = _opt("text", "JSONL field / CSV column holding the text")
    partition: str = _opt("iid", "how records are split across clients",
                          choices=("iid", "dirichlet", "classes"))
    alpha: float = _opt(0.5, "Dirichlet concentration for partition=dirichlet", lo=1e-3)
    classes_per_client: int = _opt(2, "classes (topics) per client for partition=classes", lo=1)
    max_length: int = _opt(128, "tokens per training sequence", lo=8, hi=4096)
    vocab_size: int = _opt(1024, "byte-level BPE vocabulary size", lo=300, hi=65536)


@dataclass(frozen=True)
class ModelConfig:
    """Student and teacher: named presets (distill.models) or local checkpoints (distill.hf)."""

    student: str = _opt("student-xs", "student: a preset (student-xs, student-s, teacher-s) or a local checkpoint "
                        "directory (config.json + safetensors + tokenizer.json; never downloaded)")
    teacher: str = _opt("teacher-s", "teacher: a preset or a local checkpoint directory (same tokenizer as the "
                        "student)")
    lora_rank: int = _opt(0, "0 = full fine-tuning; r > 0 = only rank-r LoRA adapters train and travel (DP-LoRA)",
                          lo=0, hi=1024)
    device: str = _opt("auto", "torch device: auto picks CUDA when present", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each client."""

    method: str = _opt("dp-kd", "local objective (dp-kd: the best private method measured at this scale)",
                       choices=("dp-sft", "dp-kd", "dp-opd"))
    local_steps: int = _opt(16, "DP-SGD steps per client per round", lo=1)
    batch_size: int = _opt(16, "expected (Poisson) batch size", lo=1)
    lr: float = _opt(3e-3, "student learning rate (Adam)", lo=0.0)
    teacher_steps: int = _opt(150, "teacher training steps on the client's records", lo=0)
    teacher_lr: float = _opt(3e-3, "teacher learning rate", lo=0.0)
    teacher_private: bool = _opt(True, "teacher trained on the client's private records (else public)")
    public_steps: int = _opt(300, "steps of non-private pre-training of a built-in student on the public corpus "
                             "before round 1 (cached by content hash; 0 = start from random weights)", lo=0)
    public_lr: float = _opt(3e-3, "learning rate of the public warm start (Adam)", lo=0.0)


@dataclass(frozen=True)
class DistillConfig:
    """Distillation objective (docs/METHODS.md §3–§5)."""

    beta: float = _opt(0.0, "generalized JSD beta (0 = forward KL, 1 = reverse KL)", lo=0.0, hi=1.0)
    lam: float = _opt(1.0, "probability of an on-policy step (DP-OPD lambda)", lo=0.0, hi=1.0)
    temperature: float = _opt(1.0, "distillation temperature tau_d", lo=1e-3)
    gen_temperature: float = _opt(1.0, "rollout sampling temperature gamma", lo=0.0)
    gen_length: int = _opt(24, "tokens generated per on-policy rollout", lo=1)
    prompt_length: int = _opt(16, "prompt tokens before the continuation (at most half of a record)", lo=1)
    swing: bool = _opt(True, "swing-style per-token temperature and noise (§5)")
    tau0: float = _opt(1.0, "swing base temperature", lo=1e-3)
    tau_max: float = _opt(8.0, "swing temperature on private tokens", lo=1e-3)
    noise_s0: float = _opt(0.0, "swing logit noise std on public tokens", lo=0.0)
    noise_s1: float = _opt(1.0, "extra swing logit noise std on private tokens", lo=0.0)
    privacy_source: str = _opt("detector", "where token privacy likelihoods come from",
                               choices=("detector", "canary"))


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD and accounting (docs/METHODS.md §2)."""

    enabled: bool = _opt(True, "train the student with DP-SGD")
    target_epsilon: float = _opt(2.0, "epsilon for the whole federation run", lo=1e-3)
    delta: float = _opt(0.0, "delta; 0 picks 1/N rounded down to a power of ten, at most 1e-5", lo=0.0, hi=1e-2)
    max_grad_norm: float = _opt(1.0, "per-example clipping norm C", lo=1e-6)
    accountant: str = _opt("prv", "privacy accountant", choices=("prv", "rdp"))
    grad_sample_mode: str = _opt("ghost", "per-example clipping: bk (book-keeping, one backward pass), ghost or "
                                 "hooks (Opacus)", choices=("bk", "ghost", "hooks"))
    reproducible_noise: bool = _opt(False, "TESTS/BENCHMARKS ONLY: seed DP noise and Poisson sampling from the run "
                                    "seed (not private against the server; the statement says so)")
    release_train_loss: bool = _opt(False, "clients also report their mean training loss (computed on private "
                                    "batches, not DP-protected; the privacy statement lists it)")


@dataclass(frozen=True)
class HEConfig:
    """CKKS homomorphic aggregation (docs/METHODS.md §7)."""

    enabled: bool = _opt(True, "aggregate client updates under CKKS encryption")
    profile: str = _opt("compact", "CKKS parameter profile (compact-seeded: symmetric seeded upload, ~8.3 B/value)",
                      choices=("compact", "compact-seeded", "conservative"))
    key_dir: str = _opt("", "key directory; empty provisions keys into the run directory")
    verify_every: int = _opt(1, "every k-th round a client checks HE vs plaintext (0 = never)", lo=0)
    value_scale: float = _opt(4.0, "values are divided by this public constant before encryption so that "
                              "model weights fit the profile's range (error grows by the same factor)", lo=1e-3)


@dataclass(frozen=True)
class FDConfig:
    """Soft-label federated distillation on a public proxy set (task = digits, docs/METHODS.md §6)."""

    mode: str = _opt("fd-kmeans", "what clients share", choices=("local", "fedavg", "fd", "fd-kmeans"))
    proxy_size: int = _opt(300, "public proxy samples carved from the training pool", lo=10)
    temperature: float = _opt(2.0, "soft-label temperature tau", lo=1e-3)
    mu: float = _opt(1.0, "weight of the distillation term", lo=0.0)
    quantile: float = _opt(0.75, "KMeans filter threshold quantile rho", lo=0.01, hi=1.0)
    clusters_per_class: int = _opt(3, "KMeans clusters per local class", lo=1)
    warmup_epochs: int = _opt(5, "local epochs before the first round", lo=0)
    local_epochs: int = _opt(2, "local epochs per round", lo=1)
    lr: float = _opt(5e-3, "classifier learning rate (Adam)", lo=0.0)
    batch_size: int = _opt(32, "classifier batch size", lo=1)
    hidden: int = _opt(64, "hidden units of the digits MLP", lo=1)


@dataclass(frozen=True)
class AuditConfig:
    """Leakage audits (docs/METHODS.md §8)."""

    enabled: bool = _opt(True, "run audits at the end of the run")
    kinds: tuple[str, ...] = _opt(("exposure", "memorisation", "mia", "epsilon"), "which audits run",
                                  choices=("exposure", "memorisation", "mia", "epsilon"))
    canary_repetitions: tuple[int, ...] = _opt((1, 4, 16), "times each inserted canary is repeated")
    canaries_per_setting: int = _opt(1, "canaries per (client, repetition) setting", lo=0)
    canary_clients: int = _opt(1, "how many clients receive canaries", lo=0)
    n_references: int = _opt(2000, "reference candidates per canary format", lo=16)
    every_round: bool = _opt(False, "also audit the global student's canary exposure after every round (HE off)")
    power_factor: float = _opt(2.0, "one-run canaries are planned so that the audit's power is at least this "
                               "times privacy.target_epsilon", lo=0.0)
    one_run_canaries: int = _opt(0, "one-run canaries pooled over all clients; 0 = as many as power_factor needs",
                                 lo=0)
    max_canary_share: float = _opt(0.3, "cap on the expected share of canary copies in a client's training set",
                                   lo=0.0, hi=0.9)
    mia_holdout: float = _opt(0.2, "share of each client's records held out by a secret coin as MIA non-members",
                              lo=0.0, hi=0.9)
    control_of: str = _opt("", "run id of the DP run this run is the non-DP control of (set by `fedveil audit "
                                "--control`); its pooled eps_LB is stored in that run too")
    release_scores: bool = _opt(False, "audit replies also carry per-record statistics (ROC points, score "
                                "histograms, thresholds); listed in the privacy statement when on")


@dataclass(frozen=True)
class StoreConfig:
    """Where runs are recorded."""

    url: str = _opt("", "SQLAlchemy URL; empty uses $FEDVEIL_DB or sqlite:///runs/fedveil.db")


@dataclass(frozen=True)
class RunSection:
    """Identity of the run."""

    name: str = _opt("demo", "human-readable run name")
    seed: int = _opt(0, "master seed", lo=0)
    run_dir: str = _opt("runs", "where run artefacts (tokenizer, keys, checkpoints) go")
    run_id: str = _opt("", "run id; empty generates one (set by `fedveil run`)")
    resume: bool = _opt(False, "continue run_id from its last complete round (set by `fedveil run --resume`)")


@dataclass(frozen=True)
class Config:
    """The whole experiment."""

    run: RunSection = field(default_factory=RunSection)
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    he: HEConfig = field(default_factory=HEConfig)
    fd: FDConfig = field(default_factory=FDConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def replace(self, **sections: Any) -> Config:
        """Return a copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


SECTIONS: dict[str, type] = {
    "run": RunSection, "federation": FederationConfig, "data": DataConfig, "model": ModelConfig,
    "train": TrainConfig, "distill": DistillConfig, "privacy": PrivacyConfig, "he": HEConfig, "fd": FDConfig,
    "audit": AuditConfig, "store": StoreConfig,
}


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value, whether given directly or through a factory."""
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Any = f.default_factory
    return factory()


def _fields(section: str) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


def choices(key: str) -> tuple[Any, ...]:
    """The values ``key`` (``"section.field"``) accepts; empty when it is not a choice.

    The registries that implement these names (``tests/test_registries.py``) must hold exactly these keys.
    """
    section, _, name = key.partition(".")
    try:
        f = _fields(section)[name]
    except KeyError:
        raise ConfigError(f"unknown configuration key {key!r}") from None
    return tuple(f.metadata.get("choices") or ())


def _describe(f: dataclasses.Field[Any]) -> str:
    m = f.metadata
    if m.get("choices"):
        return "one of: " + ", ".join(map(str, m["choices"]))
    kind = _kind(f)
    rng = ""
    if m.get("lo") is not None or m.get("hi") is not None:
        rng = f" in [{m.get('lo', '-inf')}, {m.get('hi') if m.get('hi') is not None else 'inf'}]"
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind}{rng}"


def _kind(f: dataclasses.Field[Any]) -> str:
    default = _default(f)
    if isinstance(default, tuple):
        return "list of " + ("integers" if default and isinstance(default[0], int) else "strings")
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[type(default)]


def _coerce(key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """Check one value against its field's type and constraints; return the typed value."""
    m = f.metadata
    default = _default(f)
    bad = ConfigError(f"{key} = {value!r} is not allowed; expected {_describe(f)}")
    if isinstance(default, tuple):
        if isinstance(value, str):  # the run_config form
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        item_t = int if default and isinstance(default[0], int) else str
        try:
            items = tuple(item_t(v) for v in value)
        except (TypeError, ValueError):
            raise bad from None
        if item_t is int and any(isinstance(v, bool) for v in value):
            raise bad
        if m.get("choices"):
            for v in items:
                if v not in m["choices"]:
                    raise ConfigError(f"{key} contains {v!r}, which is not allowed; "
                                      f"each item must be one of: {', '.join(m['choices'])}")
        return items
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if value != value:  # NaN
            raise bad
    elif isinstance(default, str) and not isinstance(value, str):
        raise bad
    if m.get("choices") and value not in m["choices"]:
        raise bad
    if m.get("lo") is not None and value < m["lo"]:
        raise bad
    if m.get("hi") is not None and value > m["hi"]:
        raise bad
    return value


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build a validated :class:`Config` from a nested mapping (missing keys take defaults)."""
    sections: dict[str, Any] = {}
    for name, body in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}]; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(body, Mapping):
            raise ConfigError(f"[{name}] must be a table of keys, got {body!r}")
        fields = _fields(name)
        values = {}
        for key, value in body.items():
            if key not in fields:
                raise ConfigError(f"unknown key '{name}.{key}'; allowed keys in [{name}]: {', '.join(fields)}")
            values[key] = _coerce(f"{name}.{key}", fields[key], value)
        sections[name] = SECTIONS[name](**values)
    cfg = Config(**sections)
    _check_cross(cfg)
    return cfg


def _check_cross(cfg: Config) -> None:
    """Constraints that involve more than one key."""
    if cfg.federation.min_clients > cfg.federation.clients:
        raise ConfigError(f"federation.min_clients = {cfg.federation.min_clients} is not allowed; "
                          f"expected at most federation.clients = {cfg.federation.clients}")
    if cfg.data.task == "text-file" and not cfg.data.path:
        raise ConfigError("data.path = '' is not allowed when data.task = 'text-file'; expected a file path")
    if cfg.federation.aggregator != "mean" and cfg.he.enabled:
        raise ConfigError(f"federation.aggregator = {cfg.federation.aggregator!r} is not allowed with he.enabled = "
                          "true (the server cannot sort ciphertexts); expected 'mean' or he.enabled = false")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", cfg.run.run_id):
        raise ConfigError(f"run.run_id = {cfg.run.run_id!r} is not allowed; expected letters, digits, '_' or '-'")
    if cfg.privacy.enabled and not math.isfinite(cfg.privacy.target_epsilon):
        raise ConfigError(f"privacy.target_epsilon = {cfg.privacy.target_epsilon} is not allowed with "
                          "privacy.enabled = true; expected a finite budget")
    for key in ("student", "teacher"):
        name = getattr(cfg.model, key)
        if name not in MODEL_PRESETS and not re.search(r"^[.~]|[\\/]", name):
            raise ConfigError(f"model.{key} = {name!r} is not allowed; expected a preset ({', '.join(MODEL_PRESETS)}) "
                              "or a local checkpoint directory written as a path (./dir or /abs/dir); nothing is "
                              "downloaded")
    if cfg.distill.tau_max < cfg.distill.tau0:
        raise ConfigError(f"distill.tau_max = {cfg.distill.tau_max} is not allowed; expected >= distill.tau0")


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain-dict form (lists for tuples), suitable for TOML/JSON."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        sec = getattr(cfg, name)
        out[name] = {f.name: list(v) if isinstance(v := getattr(sec, f.name), tuple) else v
                     for f in dataclasses.fields(sec)}
    return out


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML value; bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, dict[str, Any]], overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Apply ``section.key=value`` strings to a nested dict (validation happens in :func:`from_dict`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not allowed; expected section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {dotted!r} is not allowed; expected section.key "
                              f"(sections: {', '.join(SECTIONS)})")
        sec, key = parts
        data.setdefault(sec, {})[key] = parse_value(raw.strip())
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load defaults, then a TOML file, then overrides; validate everything."""
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); expected a UTF-8 TOML file") \
                from None
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in loaded.items()}
    return from_dict(apply_overrides(data, overrides))


def to_run_config(cfg: Config) -> dict[str, Scalar]:
    """Flatten to Flower's run_config: ``{"section.key": scalar}``; lists become comma strings."""
    flat: dict[str, Scalar] = {}
    for sec, body in to_dict(cfg).items():
        for key, value in body.items():
            flat[f"{sec}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat


def to_flower_tables(cfg: Config) -> dict[str, dict[str, Scalar]]:
    """Nested tables of scalars: the form of ``[tool.flwr.app.config]`` and of ``flwr run -c FILE``.

    ``store.url`` is always blank here: Flower's run_config reaches every ClientApp and the SuperLink's
    state database, and a store URL may carry credentials. The process that writes the store gets it
    from ``$FEDVEIL_DB`` (docs/METHODS.md §1).
    """
    nested: dict[str, dict[str, Scalar]] = {}
    for dotted, value in to_run_config(cfg).items():
        if dotted == "store.url":
            value = ""
        sec, key = dotted.split(".", 1)
        nested.setdefault(sec, {})[key] = value
    return nested


def from_run_config(run_config: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_run_config`; ignores nothing, so unknown keys are errors."""
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in run_config.items():
        sec, _, key = str(dotted).partition(".")
        if not key:
            raise ConfigError(f"unknown run_config key '{dotted}'; expected section.key")
        nested.setdefault(sec, {})[key] = value
    return from_dict(nested)


def reference_markdown() -> str:
    """The configuration reference table used in README."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for name in SECTIONS:
        for f in dataclasses.fields(SECTIONS[name]):
            default = _default(f)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            lines.append(f"| `{name}.{f.name}` | `{shown!r}` | {_describe(f)} | {f.metadata['help']} |")
    return "\n".join(lines)
