"""Plugin discovery: an out-of-tree plugin installed with its own pyproject, a broken plugin,
the IMP_PLUGINS allow-list, and misspelled hookimpls."""

from __future__ import annotations

import textwrap
import types

import pytest

from imp_core.errors import ArchitectureError, PluginError
from imp_core.plugin.hookspecs import hookimpl
from imp_core.plugin.manager import load_plugins
from tests.cli_util import assert_one_line_error, run_imp
from tests.mistral_factory import write_checkpoint
from tests.toy_plugin import ensure_toy_installed, write_toy_checkpoint


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory):
    ensure_toy_installed()
    return write_toy_checkpoint(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def mistral_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("m3"), "mistral3", seed=1)


def _broken_site(tmp_path, *, fail_at: str):
    """A site dir holding an installed-looking plugin distribution whose import fails.

    fail_at="module": the plugin module itself raises on import.
    fail_at="builder": the module registers 'BrokenForCausalLM' but its builder cannot import.
    """
    site = tmp_path / f"site-{fail_at}"
    dist = site / "imp_broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: imp-broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[imp.plugins]\nbroken = imp_broken\n")
    if fail_at == "module":
        (site / "imp_broken.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    else:
        (site / "imp_broken.py").write_text(textwrap.dedent("""
            from imp_core.plugin.hookspecs import hookimpl

            @hookimpl
            def imp_register_architectures(register):
                register(family="broken", builder="imp_broken_model:build",
                         hf_architectures=["BrokenForCausalLM"])
        """))
        (site / "imp_broken_model.py").write_text("import libfoo_missing\n")
    return site


def test_out_of_tree_plugin_runs_end_to_end(toy_ckpt):
    listing = run_imp("plugins")
    assert listing.returncode == 0, listing.stderr
    assert "toy" in listing.stdout and "imp-toy-plugin" in listing.stdout and "ToyForCausalLM" in listing.stdout
    proc = run_imp("run", "--model", str(toy_ckpt), "--prompt", "hello there", "-n", "8", "--seed", "3",
                   "--raw", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert "family 'toy' (plugin toy)" in proc.stderr
    assert "generated 8 tok" in proc.stderr or "(eos)" in proc.stderr


def test_allow_list_excludes_plugins(toy_ckpt, mistral_ckpt):
    proc = run_imp("run", "--model", str(toy_ckpt), "--prompt", "hi", "-n", "2", env={"IMP_PLUGINS": "mistral"})
    assert_one_line_error(proc, "unknown architecture", "ToyForCausalLM")
    ok = run_imp("run", "--model", str(mistral_ckpt), "--prompt", "hi", "-n", "2", env={"IMP_PLUGINS": "mistral"})
    assert ok.returncode == 0, ok.stderr
    listing = run_imp("plugins", env={"IMP_PLUGINS": "mistral"})
    assert "toy" in listing.stdout and "not loaded (IMP_PLUGINS)" in listing.stdout


def test_plugin_that_fails_to_import_is_named_and_others_still_run(tmp_path, mistral_ckpt, toy_ckpt):
    site = _broken_site(tmp_path, fail_at="module")
    env = {"PYTHONPATH": str(site)}
    ok = run_imp("run", "--model", str(mistral_ckpt), "--prompt", "hi", "-n", "2", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "plugin 'broken'" in ok.stderr and "needs libfoo" in ok.stderr  # the warning
    cfg = (toy_ckpt / "config.json").read_text().replace("ToyForCausalLM", "BrokenForCausalLM").replace('"toy"', '"broken"')
    other = tmp_path / "broken-arch"
    other.mkdir()
    for f in toy_ckpt.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(cfg)
    err = run_imp("run", "--model", str(other), "--prompt", "hi", env=env)
    assert_one_line_error(err, "BrokenForCausalLM", "plugin 'broken' failed to import", "needs libfoo")


def test_plugin_whose_builder_fails_names_plugin_and_error(tmp_path, toy_ckpt):
    site = _broken_site(tmp_path, fail_at="builder")
    other = tmp_path / "broken-arch"
    other.mkdir()
    for f in toy_ckpt.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text((toy_ckpt / "config.json").read_text().replace("ToyForCausalLM", "BrokenForCausalLM"))
    err = run_imp("run", "--model", str(other), "--prompt", "hi", env={"PYTHONPATH": str(site)})
    assert_one_line_error(err, "plugin 'broken'", "imp_broken_model:build", "libfoo_missing")


def test_misspelled_hookimpl_is_caught():
    typo = types.ModuleType("typo_plugin")

    @hookimpl
    def imp_register_architecture(register):  # missing the final "s"
        pass

    typo.imp_register_architecture = imp_register_architecture
    with pytest.raises(PluginError, match="typo"):
        load_plugins(env={}, extra=[("typo", typo)], use_entry_points=False)


def test_undecorated_imp_function_is_caught():
    typo = types.ModuleType("typo2")
    typo.imp_adjust_setting = lambda model, settings: None
    with pytest.raises(PluginError, match="imp_adjust_setting"):
        load_plugins(env={}, extra=[("typo2", typo)], use_entry_points=False)


def test_in_process_registration_and_resolution_order():
    a = types.ModuleType("plug_a")

    @hookimpl
    def imp_register_architectures(register):
        register(family="a", builder="x:y", hf_architectures=["AForCausalLM"], model_types=["a"])

    a.imp_register_architectures = imp_register_architectures
    plugins = load_plugins(env={}, extra=[("a", a)], use_entry_points=False)
    assert plugins.resolve(hf_architectures=["Nope", "AForCausalLM"]).family == "a"
    assert plugins.resolve(model_types=["a"]).plugin == "a"
    with pytest.raises(ArchitectureError, match="unknown architecture"):
        plugins.resolve(hf_architectures=["Nope"])
    with pytest.raises(ArchitectureError, match="builder 'x:y' failed to import"):
        plugins.load_family(plugins.resolve(model_types=["a"]))


def test_builder_string_must_name_a_callable():
    bad = types.ModuleType("bad_builder")

    @hookimpl
    def imp_register_architectures(register):
        register(family="b", builder="no_colon_here")

    bad.imp_register_architectures = imp_register_architectures
    with pytest.raises(PluginError, match="module:callable"):
        load_plugins(env={}, extra=[("bad", bad)], use_entry_points=False)
