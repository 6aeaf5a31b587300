"""Settings: precedence of the seven sources, source tracking, and one-line errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from imp_core.errors import ConfigError
from imp_core.settings.resolve import (
    ResolvedSettings,
    Settings,
    all_keys,
    load_settings,
    parse_set_item,
    user_config_path,
)

LEVELS = ["default", "user", "local", "config", "env", "set", "flag"]


class Sources:
    """Builds the inputs of load_settings for a tmp user dir and a tmp working dir."""

    def __init__(self, tmp_path: Path):
        self.user_file = tmp_path / "user" / "imp.toml"
        self.cwd = tmp_path / "work"
        self.config_file = tmp_path / "other" / "given.toml"
        for path in (self.user_file.parent, self.cwd, self.config_file.parent):
            path.mkdir(parents=True)
        self.local_file = self.cwd / "imp.toml"
        self.env: dict[str, str] = {}
        self.set_items: list[str] = []
        self.flags: dict[str, object] = {}
        self.use_config = False

    def load(self) -> ResolvedSettings:
        return load_settings(
            config_file=self.config_file if self.use_config else None,
            set_items=self.set_items,
            cli_flags=self.flags,
            env=self.env,
            cwd=self.cwd,
            user_config=self.user_file,
        )

    def label(self, level: str) -> str:
        return {
            "default": "default",
            "user": f"user file {self.user_file}",
            "local": "./imp.toml",
            "config": f"--config {self.config_file}",
            "env": "env IMP_SAMPLING__TOP_K",
            "set": "--set",
            "flag": "flag",
        }[level]

    def put(self, level: str, section: str, key: str, toml_value: str, value: object) -> None:
        """Make ``level`` set ``section.key``; toml_value is its TOML/env/--set spelling."""
        table = f"[{section}]\n{key} = {toml_value}\n"
        if level == "user":
            self.user_file.write_text(table)
        elif level == "local":
            self.local_file.write_text(table)
        elif level == "config":
            self.config_file.write_text(table)
            self.use_config = True
        elif level == "env":
            self.env[f"IMP_{section.upper()}__{key.upper()}"] = toml_value
        elif level == "set":
            self.set_items.append(f"{section}.{key}={toml_value}")
        elif level == "flag":
            self.flags[f"{section}.{key}"] = value


def _load_isolated(set_items: list[str], tmp_path: Path) -> ResolvedSettings:
    """Only --set items: no env, no user file, an empty working directory."""
    return load_settings(set_items=set_items, env={}, cwd=tmp_path, user_config=tmp_path / "none")


@pytest.fixture
def sources(tmp_path: Path) -> Sources:
    return Sources(tmp_path)


@pytest.mark.parametrize("top", range(len(LEVELS)))
def test_each_level_beats_the_ones_below(sources: Sources, top: int) -> None:
    values = random.sample(range(1, 10_000), len(LEVELS))
    for level, value in zip(LEVELS[1 : top + 1], values[1 : top + 1]):
        sources.put(level, "sampling", "top_k", str(value), value)
    resolved = sources.load()
    expected = values[top] if top else Settings().sampling.top_k
    assert resolved.settings.sampling.top_k == expected, (values, top)
    assert resolved.sources["sampling.top_k"] == sources.label(LEVELS[top])
    assert resolved.is_default("sampling.top_k") == (top == 0)


def test_sources_merge_key_by_key(sources: Sources) -> None:
    sources.user_file.write_text('[runtime]\ndevice = "cpu"\n[sampling]\ntop_k = 7\n')
    sources.local_file.write_text("[sampling]\ntemperature = 0.5\ntop_k = 8\n")
    sources.env["IMP_SAMPLING__TOP_P"] = "0.5"
    sources.set_items = ["sampling.top_k=9", "sampling.top_k=10"]  # later items win
    resolved = sources.load()
    assert resolved.settings.runtime.device == "cpu"
    assert resolved.sources["runtime.device"] == f"user file {sources.user_file}"
    assert resolved.settings.sampling.temperature == 0.5
    assert resolved.sources["sampling.temperature"] == "./imp.toml"
    assert resolved.settings.sampling.top_p == 0.5
    assert resolved.sources["sampling.top_p"] == "env IMP_SAMPLING__TOP_P"
    assert resolved.settings.sampling.top_k == 10
    assert resolved.sources["sampling.top_k"] == "--set"
    assert resolved.sources["sampling.min_p"] == "default"
    assert set(resolved.sources) == set(all_keys())


def test_defaults_match_the_documented_table() -> None:
    s = Settings()
    assert (s.runtime.device, s.runtime.dtype, s.runtime.context, s.runtime.max_tokens) == (
        "auto", "auto", 0, 256)
    assert (s.runtime.chat, s.runtime.fast_path, s.runtime.cuda_graphs, s.runtime.threads) == (
        True, "auto", True, 0)
    assert s.runtime.memory_limit is None
    sp = s.sampling
    assert (sp.temperature, sp.top_k, sp.top_p, sp.min_p) == (0.8, 40, 0.95, 0.05)
    assert (sp.repeat_penalty, sp.repeat_last_n, sp.seed) == (1.0, 64, None)
    assert (s.attention.backend, s.moe.experts_impl, s.kv_cache.dtype, s.quant.dequant) == (
        "auto", "auto", "auto", "auto")
    assert (s.logging.level, s.logging.file) == ("info", None)
    assert "bench" in Settings.model_fields
    assert len(all_keys()) == len(set(all_keys())) == 22


UNKNOWN_CASES = [
    # (section, key, message fragment, suggestion)
    ("sampling", "top_kk", "unknown settings key 'sampling.top_kk'", "did you mean 'sampling.top_k'?"),
    ("samplng", "top_k", "unknown settings section 'samplng'", "did you mean 'sampling'?"),
    ("runtime", "temperature", "unknown settings key 'runtime.temperature'",
     "did you mean 'sampling.temperature'?"),
]


@pytest.mark.parametrize("level", LEVELS[1:])
@pytest.mark.parametrize("section,key,fragment,hint", UNKNOWN_CASES)
def test_unknown_names_are_errors_naming_source_and_suggestion(
    sources: Sources, level: str, section: str, key: str, fragment: str, hint: str
) -> None:
    sources.put(level, section, key, "3", 3)
    with pytest.raises(ConfigError) as info:
        sources.load()
    message = str(info.value)
    assert fragment in message and hint in message
    where = {
        "user": f"user file {sources.user_file}",
        "local": "./imp.toml",
        "config": f"--config {sources.config_file}",
        "env": f"env IMP_{section.upper()}__{key.upper()}",
        "set": "--set",
        "flag": "flag",
    }[level]
    assert f"in {where}" in message
    assert "\n" not in message


@pytest.mark.parametrize("level", LEVELS[1:])
def test_wrong_type_names_key_source_value_and_expectation(sources: Sources, level: str) -> None:
    sources.put(level, "sampling", "top_k", '"lots"' if level in ("user", "local", "config") else "lots", "lots")
    with pytest.raises(ConfigError) as info:
        sources.load()
    message = str(info.value)
    label = "--top-k" if level == "flag" else sources.label(level)  # a flag's error names the flag
    assert "'sampling.top_k'" in message and f"in {label}" in message
    assert '"lots"' in message and "expected a valid integer" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "item,expected",
    [
        ("sampling.top_p=1.5", "expected less than or equal to 1"),
        ("sampling.top_p=0", "expected greater than 0"),
        ("sampling.min_p=1", "expected less than 1"),
        ("sampling.temperature=-0.1", "expected greater than or equal to 0"),
        ("sampling.temperature=nan", "finite number"),
        ("runtime.max_tokens=0", "expected greater than 0"),
        ("runtime.context=-1", "expected greater than or equal to 0"),
        ("runtime.device=gpu", "expected auto, cpu, cuda or cuda:N"),
        ("runtime.device=cuda:x", "expected auto, cpu, cuda or cuda:N"),
        ("runtime.dtype=int8", "expected one of auto, bfloat16, float16, float32"),
        ("runtime.fast_path=maybe", "expected one of auto, on, off"),
        ("runtime.chat=1", "expected a valid boolean"),
        ("sampling.top_k=2.5", "expected a valid integer"),
        ('sampling.top_k="20"', "expected a valid integer"),  # a quoted number is a string
        ("quant.dequant=lazy", "expected one of auto, load, on_the_fly"),
        ("logging.level=loud", "expected one of debug, info, warning, error"),
    ],
)
def test_out_of_range_and_bad_choices(item: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="in --set") as info:
        _load_isolated([item], tmp_path)
    assert expected in str(info.value)
    assert f"'{item.split('=')[0]}'" in str(info.value)


@pytest.mark.parametrize(
    "item,key,value",
    [
        ("runtime.dtype=bf16", "runtime.dtype", "bfloat16"),
        ("runtime.dtype=FP16", "runtime.dtype", "float16"),
        ("runtime.dtype=half", "runtime.dtype", "float16"),
        ("runtime.dtype=fp32", "runtime.dtype", "float32"),
        ("runtime.dtype=float", "runtime.dtype", "float32"),
        ("runtime.device=cuda:3", "runtime.device", "cuda:3"),
        ("runtime.device=CPU", "runtime.device", "cpu"),
        ("runtime.fast_path=off", "runtime.fast_path", "off"),
        ("runtime.fast_path=true", "runtime.fast_path", "on"),
        ("quant.dequant=on-the-fly", "quant.dequant", "on_the_fly"),
        ("logging.level=WARN", "logging.level", "warning"),
        ("logging.file=none", "logging.file", None),
        ("logging.file=run.log", "logging.file", "run.log"),
        ("sampling.seed=none", "sampling.seed", None),
        ("sampling.seed=1234", "sampling.seed", 1234),
        ("sampling.temperature=0", "sampling.temperature", 0.0),
        ("sampling.temperature=1e-1", "sampling.temperature", 0.1),
        ("runtime.chat=False", "runtime.chat", False),
        ("attention.backend=1", "attention.backend", "1"),  # a string setting keeps the text
        ("attention.backend='sdpa'", "attention.backend", "sdpa"),
        ("kv_cache.dtype = fp8 ", "kv_cache.dtype", "fp8"),
    ],
)
def test_set_values_are_parsed_and_normalised(
    item: str, key: str, value: object, tmp_path: Path
) -> None:
    resolved = _load_isolated([item], tmp_path)
    assert resolved.value(key) == value
    assert type(resolved.value(key)) is type(value)
    assert resolved.sources[key] == "--set"


@pytest.mark.parametrize("item", ["sampling.top_k", "top_k=3", "=3", ".top_k=3", "sampling.=3", ""])
def test_bad_set_syntax_states_the_form(item: str) -> None:
    with pytest.raises(ConfigError, match=r"expected the form section\.key=value"):
        parse_set_item(item)


def test_parse_set_item_returns_typed_values() -> None:
    assert parse_set_item("sampling.top_k=20") == ("sampling.top_k", 20)
    assert parse_set_item("sampling.top_p=0.5") == ("sampling.top_p", 0.5)
    assert parse_set_item("runtime.cuda_graphs=false") == ("runtime.cuda_graphs", False)
    assert parse_set_item("runtime.device=cuda:0") == ("runtime.device", "cuda:0")
    with pytest.raises(ConfigError, match="did you mean 'sampling.top_k'"):
        parse_set_item("sampling.topk=20")


def test_env_vars_without_double_underscore_are_not_settings(sources: Sources) -> None:
    sources.env.update({"IMP_PLUGINS": "mistral", "IMP_TOPK": "3", "IMPORTANT": "x", "HOME": "/"})
    resolved = sources.load()
    assert all(source == "default" for source in resolved.sources.values())
    sources.env["IMP_KV_CACHE__DTYPE"] = "fp8"  # a section name with an underscore
    assert sources.load().settings.kv_cache.dtype == "fp8"


def test_user_config_location_from_env(tmp_path: Path) -> None:
    user_file = tmp_path / "elsewhere.toml"
    user_file.write_text("[sampling]\nseed = 5\n")
    env = {"IMP_USER_CONFIG": str(user_file)}
    resolved = load_settings(env=env, cwd=tmp_path)
    assert resolved.settings.sampling.seed == 5
    assert resolved.sources["sampling.seed"] == f"user file {user_file}"
    assert user_config_path(None, {}).name == "imp.toml"  # platformdirs location


def test_missing_config_file_is_an_error_naming_it(sources: Sources) -> None:
    with pytest.raises(ConfigError, match="--config file not found: nope.toml"):
        load_settings(config_file="nope.toml", env={}, cwd=sources.cwd, user_config=sources.user_file)


def test_relative_config_file_is_found_from_cwd(sources: Sources) -> None:
    (sources.cwd / "mine.toml").write_text("[moe]\nexperts_impl = \"grouped\"\n")
    resolved = load_settings(config_file="mine.toml", env={}, cwd=sources.cwd,
                             user_config=sources.user_file)
    assert resolved.settings.moe.experts_impl == "grouped"
    assert resolved.sources["moe.experts_impl"] == "--config mine.toml"


def test_toml_syntax_error_names_file_and_line(sources: Sources) -> None:
    sources.local_file.write_text('[runtime]\ndevice = "cpu"\ncontext = = 3\n')
    with pytest.raises(ConfigError) as info:
        sources.load()
    message = str(info.value)
    assert str(sources.local_file) in message and "line 3" in message
    assert "\n" not in message


def test_top_level_key_outside_a_section(sources: Sources) -> None:
    sources.local_file.write_text("top_k = 3\n")
    with pytest.raises(ConfigError, match=r"not inside a \[section\].*did you mean 'sampling.top_k'"):
        sources.load()


def test_empty_section_is_valid_but_has_no_keys(sources: Sources) -> None:
    sources.local_file.write_text("[bench]\n")
    sources.load()
    sources.local_file.write_text("[bench]\nruns = 3\n")
    with pytest.raises(ConfigError, match="unknown settings key 'bench.runs'"):
        sources.load()


def test_none_flags_count_as_not_given(sources: Sources) -> None:
    sources.set_items = ["sampling.seed=9"]
    sources.flags = {"sampling.seed": None, "sampling.temperature": 0.0}
    resolved = sources.load()
    assert resolved.settings.sampling.seed == 9 and resolved.sources["sampling.seed"] == "--set"
    assert resolved.settings.sampling.temperature == 0.0
    assert resolved.sources["sampling.temperature"] == "flag"


def test_show_lists_every_key_with_value_and_source(sources: Sources) -> None:
    sources.env["IMP_SAMPLING__TOP_K"] = "17"
    sources.set_items = ["runtime.device=cuda:1"]
    resolved = sources.load()
    text = resolved.show()
    lines = text.splitlines()
    for key in all_keys():
        (line,) = [line for line in lines if line.startswith(key + " ")]
        assert f"({resolved.sources[key]})" in line
    (top_k,) = [line for line in lines if line.startswith("sampling.top_k ")]
    assert "= 17" in top_k and "(env IMP_SAMPLING__TOP_K)" in top_k
    (device,) = [line for line in lines if line.startswith("runtime.device ")]
    assert '= "cuda:1"' in device and "(--set)" in device and "cuda:N" in device  # description
    (seed,) = [line for line in lines if line.startswith("sampling.seed ")]
    assert "= none" in seed and "(default)" in seed
    headers = [line.split()[0] for line in lines if line.startswith("[")]
    assert headers == [f"[{name}]" for name in Settings.model_fields]
    # keys are grouped under their own section header
    current = None
    for line in lines:
        if line.startswith("["):
            current = line.split()[0].strip("[]")
        elif line:
            assert line.startswith(f"{current}.")
    # value columns line up
    assert len({line.index(" = ") for line in lines if " = " in line}) == 1
    plain = resolved.show(descriptions=False)
    assert "#" not in plain and "(env IMP_SAMPLING__TOP_K)" in plain


def test_with_overrides_applies_only_given_keys_and_records_source(sources: Sources) -> None:
    sources.set_items = ["sampling.temperature=0.3"]
    base = sources.load()
    family = base.with_overrides({"sampling.top_k": 64, "runtime.dtype": "bf16"}, "plugin gemma4")
    assert family.settings.sampling.top_k == 64 and family.sources["sampling.top_k"] == "plugin gemma4"
    assert family.settings.runtime.dtype == "bfloat16"
    assert family.settings.sampling.temperature == 0.3 and family.sources["sampling.temperature"] == "--set"
    assert not family.is_default("sampling.top_k") and family.is_default("sampling.top_p")
    # the original is untouched
    assert base.settings.sampling.top_k == 40 and base.is_default("sampling.top_k")
    assert base.settings.runtime.dtype == "auto"
    untouched = {k for k in all_keys() if k not in ("sampling.top_k", "runtime.dtype")}
    assert {k: family.value(k) for k in untouched} == {k: base.value(k) for k in untouched}


def test_with_overrides_validates_and_names_the_source(sources: Sources) -> None:
    base = sources.load()
    with pytest.raises(ConfigError, match=r"'sampling.top_p' in generation_config.json: expected"):
        base.with_overrides({"sampling.top_p": 2.0}, "generation_config.json")
    with pytest.raises(ConfigError, match="unknown settings key 'sampling.topp' in plugin x; did you mean"):
        base.with_overrides({"sampling.topp": 0.5}, "plugin x")
    assert base.settings.sampling.top_p == 0.95


def test_is_default_rejects_unknown_keys(sources: Sources) -> None:
    with pytest.raises(ConfigError, match="did you mean 'sampling.min_p'"):
        sources.load().is_default("sampling.minp")


def test_assignment_after_load_is_validated(sources: Sources) -> None:
    resolved = sources.load()
    with pytest.raises(ValueError):
        resolved.settings.sampling.top_k = -1
    with pytest.raises(ValueError):
        Settings(sampling={"nope": 1})
