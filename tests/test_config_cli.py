"""The CLI's quantize flags are generated from QuantConfig's field metadata: every option has exactly one flag,
flags not given keep the Python defaults, and each kind of flag (negated booleans, parsed sizes, lists) lands in
its field. ``settings.resolve`` decides the None options once and never rewrites the user's config."""
from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

import pytest

from onnxptq.cli import build_parser, config_from_args
from onnxptq.config import QuantConfig
from onnxptq.errors import ConfigError
from onnxptq.settings import resolve


def _cfg(*flags: str) -> QuantConfig:
    args = build_parser().parse_args(["quantize", "m.onnx", "--calib", "c.npz", "-o", "q.onnx", *flags])
    return config_from_args(args)


def test_no_flags_is_the_python_default():
    assert _cfg() == QuantConfig()


def test_every_field_has_one_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["quantize"]
    dests = [a.dest for a in sub._actions]
    for f in fields(QuantConfig):
        assert dests.count(f.name) == 1, f.name
        assert f.metadata["help"], f"{f.name} has no help text"


def test_flag_kinds_reach_their_fields():
    c = _cfg("--w-bits", "4", "--w-asymmetric", "--no-bias-correction", "--a-symmetric", "--max-memory", "6GiB",
             "--skip-nodes", "a,b", "--input-shape", "x:1,3,8,8", "--first-last-bits", "same", "--mixed", "search",
             "--bits", "2,4,8", "--budget-size", "1.5MB", "--no-progress", "--scale", "po2", "--method", "rapq")
    assert (c.w_bits, c.w_symmetric, c.bias_correction, c.a_symmetric) == (4, False, False, True)
    assert c.max_memory_mb == 6 * 1024 and c.skip_nodes == ("a", "b") and c.input_shapes == {"x": [1, 3, 8, 8]}
    assert c.first_last_bits is None and c.mixed_bits == (2, 4, 8) and c.budget_size == 1.5e6 and not c.progress
    assert c.method == "rapq"


def test_bad_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _cfg("--scale", "po3")
    assert "invalid choice" in capsys.readouterr().err


def test_config_is_frozen_and_resolve_does_not_rewrite_it():
    c = QuantConfig(method="brecq", skip_nodes=["a"])
    with pytest.raises(FrozenInstanceError):
        c.w_bits = 4
    r = resolve(c)
    assert c.loss is None and c.num_calib is None and r.loss == "mse" and r.num_calib == 1024  # the fast preset's
    assert resolve(r) == r  # idempotent
    assert c.skip_nodes == ("a",)


def test_field_checks_name_the_option():
    with pytest.raises(ConfigError, match="w_bits"):
        QuantConfig(w_bits=9)
    with pytest.raises(ConfigError, match="scale must be one of"):
        QuantConfig(scale="po3")
    with pytest.raises(ConfigError, match="unknown target"):
        QuantConfig(target="tpu")


def test_every_subcommand_prints_its_help():
    """argparse %-formats help strings: a literal '%' in an option's help (``--a-output-search``: "within 1 %")
    made ``onnxptq quantize --help`` crash with a traceback."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert parser.format_help()
    for name, p in sub.choices.items():
        text = p.format_help()
        assert name in text
    assert "1 %" in sub.choices["quantize"].format_help()
