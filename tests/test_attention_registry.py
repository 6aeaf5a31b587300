"""The one attention-backend registry: a plugin registers a backend, the policy chooses it from
the same registry and the model runs exactly that object."""

from __future__ import annotations

import types

import pytest
import torch

from imp_core.errors import PluginError
from imp_core.layers.attention import EAGER, SDPA, sdpa_attention
from imp_core.plugin.attention_registry import AttentionBackend, AttentionRegistry
from imp_core.plugin.hookspecs import hookimpl
from imp_core.plugin.manager import load_plugins
from imp_core.plugin.plan_types import AttentionLayerSpec
from imp_core.run.generator import Generator
from imp_core.run.sampling import Sampler, SamplingParams
from imp_core.run.session import load_session
from imp_core.settings.resolve import load_settings
from tests.mistral_factory import write_checkpoint


def counting_plugin(calls: list[int]) -> types.ModuleType:
    """A plugin whose backend computes SDPA and counts the calls it served."""

    def run(q, k, v, q_pos, key_pos, *, scale, window=None):
        calls.append(q.shape[2])
        return sdpa_attention(q, k, v, q_pos, key_pos, scale=scale, window=window)

    mod = types.ModuleType("counting_attention")
    mod.imp_register_attention_backends = hookimpl(lambda register: register(
        AttentionBackend("counting", run, frozenset({"cpu", "cuda"}), description="test: sdpa that counts")))
    return mod


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("registry"), "mistral", seed=5)


def _greedy(session, prompt: list[int], n: int) -> list[int]:
    gen = Generator(session.model, context=64)
    sampler = Sampler(SamplingParams(temperature=0.0), session.inspection.info.vocab_size, torch.device("cpu"))
    out, _ = gen.generate(prompt, sampler, max_tokens=n, eos_ids=())
    return out


def test_core_backends_are_registered_last_in_chain_order():
    plugins = load_plugins(env={}, use_entry_points=False)
    assert list(plugins.attention) == ["numba-decode", "sdpa", "eager"]
    assert plugins.attention["sdpa"] is SDPA and plugins.attention["eager"] is EAGER
    assert plugins.attention["numba-decode"].fast_path_only


def test_a_plugin_backend_is_chosen_and_is_what_the_run_executes(checkpoint):
    calls: list[int] = []
    plugins = load_plugins(env={}, extra=[("counting", counting_plugin(calls))])
    assert list(plugins.attention)[0] == "counting"
    resolved = load_settings(cli_flags={"runtime.device": "cpu"}, env={}, user_config=None, cwd=None)
    session = load_session(checkpoint, resolved, plugins, progress=False)
    plan = dict(session.inspection.plan)
    assert any(v.startswith("counting - ") for k, v in plan.items() if k.startswith("attention")), plan
    layers = session.inspection.info.num_layers
    prompt = list(range(3, 13))
    ours = _greedy(session, prompt, 6)
    # prefill (10 query tokens) then one query token per decode step, in every layer
    assert calls[:layers] == [10] * layers and set(calls[layers:]) == {1} and len(calls) == layers * 6

    plain = load_session(checkpoint, resolved, load_plugins(env={}), progress=False)
    assert ours == _greedy(plain, prompt, 6)


def test_registry_refuses_duplicates_and_non_backends():
    reg = AttentionRegistry()
    reg.register(SDPA)
    with pytest.raises(PluginError, match="registered twice"):
        reg.register(SDPA)
    with pytest.raises(PluginError, match="AttentionBackend"):
        reg.register("sdpa")


def test_backend_declines_by_capability():
    layer = AttentionLayerSpec(0, "sliding", 8, 2, 512, sliding_window=64, output_gate=True)
    narrow = AttentionBackend("k", sdpa_attention, frozenset({"cuda"}), max_head_dim=256, sliding_window=False,
                              output_gate=False, dtypes=frozenset({torch.bfloat16}))
    assert narrow.declines(layer, "cpu") == "k does not run on cpu"
    assert narrow.declines(layer, "cuda", torch.float32) == "k does not run in float32"
    assert "head_dim <= 256" in narrow.declines(layer, "cuda", torch.bfloat16)
    assert SDPA.declines(layer, "cpu", torch.float32) is None
