"""The method registry's checks (recon/methods): method-specific validation, options of other methods,
and the loss / sample-count defaults, on QuantConfig objects as the resolver will pass them (loss and
num_calib left None: config.py stops resolving them when the resolver lands)."""
import pytest

from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.recon.methods import METHODS, check_options, get_method, method_defaults
from onnxptq.recon.settings import PRESETS


def cfg(**kw) -> QuantConfig:
    return QuantConfig(**kw)  # unresolved (loss, num_calib None), as settings.resolve passes it


def test_registry_names_match_the_cli_and_the_modules():
    from onnxptq.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["quantize"]
    assert next(a for a in sub._actions if a.dest == "method").choices == tuple(METHODS)
    assert all(get_method(n).name == n for n in METHODS)
    with pytest.raises(ConfigError, match="method must be one of rtn, adaround"):
        get_method("gptq")


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_of_every_method_pass(name):
    kw = dict(scale="po2") if name == "rapq" else {}
    check_options(cfg(method=name, **kw))


@pytest.mark.parametrize("kw, msg", [
    (dict(method="rtn", iters=5), r"--iters is not read by --method rtn \(used by --method adaround / attention"),
    (dict(method="bitsplit", loss="mse"), r"--loss is not read by --method bitsplit"),
    (dict(method="brecq", drop_prob=0.3), r"--drop-prob is not read by --method brecq \(used by --method qdrop\)"),
    (dict(method="brecq", attn_tau=1.0), r"--attn-tau is not read by --method brecq \(used by --method attention\)"),
    (dict(method="attention", round_lambda=0.1), r"--round-lambda is not read by --method attention"),
    (dict(method="adaround", granularity="stage"), r"--granularity is not read by --method adaround"),
    (dict(method="rtn", iters=5, recon_batch_size=8), r"--iters, --recon-batch-size are not read by --method rtn"),
    (dict(method="brecq", bitsplit_iters=3), r"--bitsplit-iters is not read by --method brecq \(used by --method bitsplit\)"),
])
def test_options_of_other_methods_are_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        check_options(cfg(**kw))


@pytest.mark.parametrize("kw", [dict(method="qdrop", drop_prob=0.3), dict(method="attention", attn_tau=1.0),
                                dict(method="rtn", rounding="floor"), dict(method="bitsplit", ecaq=True),
                                dict(method="rtn", ecaq=True), dict(method="rapq", scale="po2", lp_alpha=0.5),
                                dict(method="brecq", loss="fisher", iters=10)])
def test_own_options_pass(kw):
    check_options(cfg(**kw))


@pytest.mark.parametrize("kw, msg", [
    (dict(method="rapq"), "--method rapq learns power-of-two scales: add --scale po2"),
    (dict(method="brecq", rounding="floor"), "--rounding floor is a round-to-nearest baseline: use it with --method rtn"),
    (dict(method="brecq", ecaq=True), "--ecaq works with --method rtn or bitsplit"),
    (dict(method="bitsplit", scale="po2"), "--method bitsplit solves a float scale per channel"),
    (dict(method="bitsplit", w_bits=2), "Bit-Split needs w_bits >= 3"),
    (dict(method="bitsplit", w_bits=5, weight_grid="log"), "support 2-4 bits; got w_bits=5"),
    (dict(method="bitsplit", bitsplit_points=8), "bitsplit_points must be >= 16"),
    (dict(method="rtn", weight_grid="log"), "--weight-grid log is solved by Bit-Split"),
    (dict(method="attention", attn_tau=0.0), "attn_tau must be positive"),
    (dict(method="rapq", scale="po2", lp_alpha=1.5), r"lp_alpha must be in \(0, 1\]"),
    (dict(method="brecq", loss="l1"), "loss must be one of mse, fisher, lp"),
])
def test_method_checks_keep_their_messages(kw, msg):
    with pytest.raises(ConfigError, match=msg):  # a range check of one field fails at construction already
        check_options(QuantConfig(**kw))


def test_method_defaults():
    assert method_defaults(cfg(method="rtn")) == {"num_calib": 256}
    assert method_defaults(cfg(method="rapq", scale="po2", preset="full")) == {"loss": "lp",
                                                                               "num_calib": PRESETS["full"].samples}
    assert method_defaults(cfg(method="brecq")) == {"loss": "mse", "num_calib": PRESETS["fast"].samples}
    assert method_defaults(cfg(method="bitsplit")) == {"num_calib": PRESETS["fast"].samples}
    assert method_defaults(cfg(method="brecq", loss="fisher", num_calib=64)) == {}


def test_defaults_agree_with_config_resolution():
    """settings.resolve takes loss / num_calib from the registry."""
    from onnxptq.settings import resolve as resolve_config
    for name in METHODS:
        kw = dict(scale="po2") if name == "rapq" else {}
        for preset in PRESETS if name != "rtn" else ["fast"]:  # rtn reads no preset
            resolved = resolve_config(QuantConfig(method=name, preset=preset, **kw))
            d = method_defaults(cfg(method=name, preset=preset, **kw))
            assert d["num_calib"] == resolved.num_calib
            assert d.get("loss") == resolved.loss


def test_attention_preset_departures_live_in_its_module():
    from onnxptq.recon.settings import resolve
    full = resolve(QuantConfig(method="attention", preset="full"))
    assert (full.iters, full.batch_size, full.lr, full.round_lambda) == (2000, 64, 4e-4, 0.0)
    assert resolve(QuantConfig(method="attention")).lr == 1e-2
    assert resolve(QuantConfig(method="brecq", preset="full")).lr == PRESETS["full"].lr


def test_the_runners_never_name_a_method():
    """The engine, its settings and the runner dispatch read the method's recipe (recon/methods), never its name:
    no method-name literal and no test of a rounding's type. (Only the method modules and the registry name them.)"""
    import re
    from pathlib import Path

    import onnxptq.recon as recon
    root = Path(recon.__file__).parent
    for name in ("engine.py", "settings.py", "run.py", "roundings.py", "region.py", "results.py"):
        path = root / name
        if not path.exists():
            continue
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        code = re.sub(r'""".*?"""', "", code, flags=re.S)  # docstrings may cite the papers' methods
        for m in METHODS:
            assert f'"{m}"' not in code, f"{name} names method {m!r}"
        assert "isinstance(" not in code or not re.search(r"isinstance\([^)]*Rounding", code), name


def test_fast_preset_gives_the_step_iterations_of_wide_activations_to_the_rounding():
    """At 8-bit activations with float scales the fast preset runs no step phase; its iterations go to the
    rounding. Narrower activations anywhere (the body, or the first/last layers' inputs), Po2 scales, an explicit
    act_iters, or a preset without the rule keep both phases; an explicit iters is not topped up."""
    from onnxptq.recon.settings import resolve
    fast = PRESETS["fast"]
    phases = lambda **kw: resolve(QuantConfig(method="brecq", **kw)).phases  # noqa: E731
    assert fast.steps_below_bits == 8
    assert phases(a_bits=8) == [("rounding", fast.iters + fast.act_iters)]
    assert phases(a_bits=4) == [("rounding", fast.iters), ("steps", fast.act_iters)]
    assert phases(a_bits=8, first_last_bits=4) == [("rounding", fast.iters), ("steps", fast.act_iters)]
    assert phases(a_bits=8, act_iters=30) == [("rounding", fast.iters), ("steps", 30)]
    assert phases(a_bits=8, iters=250) == [("rounding", 250)]
    full = PRESETS["full"]
    assert phases(a_bits=8, preset="full") == [("rounding", full.iters), ("steps", full.act_iters)]
    assert phases(a_bits=8, scale="po2") == [("rounding", fast.iters), ("steps", fast.act_iters)]
    assert resolve(QuantConfig(method="qdrop", a_bits=8)).phases == [("joint", fast.iters)]  # steps learned jointly


def test_a_method_is_data_the_engine_follows():
    from onnxptq.recon.settings import resolve
    from onnxptq.recon.methods.base import Method
    from onnxptq.recon.methods.brecq import METHOD as brecq
    import dataclasses
    joint = dataclasses.replace(brecq, name="joint-brecq", learn_steps="joint", acts_during_rounding=True)
    assert isinstance(joint, Method)
    st = resolve(QuantConfig(method="qdrop"))
    assert [p for p, _ in st.phases] == ["joint"] and st.drop_prob == 0.5 and st.rounding == "soft-offset"
    st = resolve(QuantConfig(method="attention", a_bits=4))
    assert st.rounding == "any-grid-point" and st.round_lambda == 0.0 and [p for p, _ in st.phases] == ["rounding", "steps"]
    assert resolve(QuantConfig(method="adaround", granularity="block")).granularity == "layer"


def test_a_new_method_is_one_declaration_and_a_registry_line(monkeypatch, tmp_path):
    """The design-notes example: BRECQ's regions with a joint schedule and no drop, registered and run end to end
    through the API and the CLI without touching the engine."""
    import numpy as np
    from onnxptq import api
    from onnxptq.cli import main
    from onnxptq.recon.methods.base import RECON_OPTIONS, Method
    from onnxptq.recon.methods.rtn import SHARED_CHECKS
    from helpers import MODELS

    new = Method("brecq-joint", RECON_OPTIONS - {"act_iters"}, SHARED_CHECKS, learn_steps="joint",
                 acts_during_rounding=True)
    monkeypatch.setitem(METHODS, "brecq-joint", new)
    calib = np.load(MODELS / "digits_calib.npz")["input"][:32]
    res = api.quantize(MODELS / "digits_resnet.onnx", calib, method="brecq-joint", w_bits=4, iters=5,
                       recon_batch_size=8, progress=False, check_kernels=False)
    assert res.recon is not None and res.recon.regions and all(r.iterations == 5 for r in res.recon.regions
                                                               if r.layers)
    np.save(tmp_path / "c.npy", calib)
    assert main(["quantize", str(MODELS / "digits_resnet.onnx"), "--calib", str(tmp_path / "c.npy"), "-o",
                 str(tmp_path / "q.onnx"), "--method", "brecq-joint", "--iters", "2", "--no-progress",
                 "--no-kernel-check"]) == 0
