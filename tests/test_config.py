"""The settings declared once (``autoprune.settings``), composed into the frozen ``SearchConfig``
(``autoprune.config``): the command line, the resume check and the bench's shared options come from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoprune.bench.run import _SHARED
from autoprune.cli import _parser
from autoprune.config import (
    SECTIONS,
    SearchConfig,
    all_settings,
    resolve_paths,
    resumed,
    settings_for,
    validate,
)
from autoprune.errors import UserError
from autoprune.settings import BENCH, INSPECT, SEARCH, TRAIN

# What a resumed run may not change: the settings that define what it searches.
IDENTITY = {"model", "data", "budget", "strategy", "criterion", "granularity", "mask_scope", "criterion_batches",
            "sparsity_train", "sparsity_lambda", "pfp_eps", "seed", "weights", "space", "output_key", "calib_batches",
            "score_images", "adaptive_bn", "tolerance", "holdout", "limit_train", "batch_size", "limit_test",
            "warm_start", "damage", "bounds_from_sensitivity", "sensitivity_from", "latency_batch",
            "target", "latency_threads", "widths", "pruner"}


def _options(parser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def test_every_field_is_declared_once_in_one_section():
    names = [d.name for d in all_settings()]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(SearchConfig))
    owners = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert sorted(owners) == sorted(names)  # each in exactly one concept's settings
    assert {d.name for d in all_settings() if d.identity} == IDENTITY


def test_the_command_line_is_generated_from_the_declarations():
    parser = _parser()
    declared = {d.option for d in all_settings() if SEARCH in d.commands}
    assert _options(parser, "search") == declared | {"--quiet", "--resume"}
    assert _options(parser, "sensitivity") == _options(parser, "search")
    for command, own in ((TRAIN, {"--epochs", "--lr", "--out", "--init", "--save-init", "--save-init-epoch"}),
                         (INSPECT, {"--json"})):
        assert _options(parser, command) == {d.option for d in all_settings() if command in d.commands} | own | {
            "--quiet"}
    assert set(_SHARED) == {d.name for d in all_settings() if BENCH in d.commands}
    assert {"seed", "calib_batches", "finetune_lr", "limit_train"} <= set(_SHARED)
    assert "trials" not in _SHARED and "budget" not in _SHARED  # each study has its own


def test_search_options_leave_out_what_was_not_given():
    args = _parser().parse_args(["search", "--trials", "7", "--no-adaptive-bn"])
    given = {name for name in vars(args) if name not in ("command", "quiet", "resume")}
    assert given == {"trials", "adaptive_bn"} and args.trials == 7 and args.adaptive_bn is False


def test_help_states_each_default_from_the_declaration(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for d in all_settings():
        if SEARCH in d.commands and d.type is not bool:
            assert f"(default: {d.default})" in text, d.name
    assert "(default: True)" not in text and "(default: False)" not in text


def test_config_is_frozen():
    config = SearchConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.trials = 3  # type: ignore[misc]


def test_validate_returns_a_resolved_copy_and_leaves_the_original(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    config = SearchConfig(weights="w.pt", device="cpu", budget="30%params")
    checked, budget = validate(config)
    assert checked.weights == str(tmp_path / "w.pt") and config.weights == "w.pt"
    assert budget.primary.metric == "params" and budget.primary.fraction == pytest.approx(0.3)


@pytest.mark.parametrize(("options", "message"), [
    ({"trials": 0}, "--trials must be at least 1"),
    ({"calib_batches": 0}, "--calib-batches must be at least 1"),
    ({"holdout": 0}, "--holdout must be at least 1"),
    ({"finetune_top": -1}, "--finetune-top and --finetune-epochs must not be negative"),
    ({"granularity": "weight", "criterion": "fpgm"}, "--granularity weight ranks single weights"),
    ({"strategy": "pfp"}, "--strategy pfp allocates by PFP's sensitivities"),
    ({"pfp_eps": 0.1}, "--pfp-eps goes with --strategy pfp"),
    ({"tolerance": 1.5}, "--tolerance must be between 0 and 1"),
    ({"ray_address": "127.0.0.1:1", "ray_local": 2}, "not both"),
    ({"strategy": "annealing"}, "unknown strategy 'annealing'"),
    ({"budget": "150%flops"}, "150%flops"),
    ({"latency_batch": 0}, "--latency-batch must be at least 1"),
    ({"latency_threads": -1}, "--latency-threads must be 0"),
    ({"latency_checks": -1}, "--latency-checks must be 0 or more"),
    ({"latency_rounds": 0}, "--latency-rounds must be at least 1"),
])
def test_validate_refuses_each_bad_setting(options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(SearchConfig(**options))


SAVED = {**dataclasses.asdict(SearchConfig(trials=100, finetune_top=5, budget="30%flops", out="/runs/a")),
         "space_config": {"step": 0.05}, "groups": []}  # config.yaml holds more than the settings


def test_a_bare_resume_takes_every_setting_from_the_run():
    config, changes = resumed(SAVED, {"out": "/runs/a"})
    assert changes == []
    assert (config.trials, config.finetune_top, config.budget) == (100, 5, "30%flops")


def test_a_resume_overrides_a_setting_that_may_change_and_says_so():
    config, changes = resumed(SAVED, {"out": "/runs/a", "trials": 120, "finetune_top": 5})
    assert config.trials == 120 and config.finetune_top == 5 and config.budget == "30%flops"
    assert changes == ["--trials 100 -> 120"]


def test_a_resume_refuses_another_value_of_an_identity_setting_even_the_default():
    with pytest.raises(UserError, match="--budget '50%flops' differs from the run's '30%flops'"):
        resumed(SAVED, {"out": "/runs/a", "budget": "50%flops"})
    config, changes = resumed(SAVED, {"out": "/runs/a", "budget": "30%flops"})  # the same value: fine
    assert changes == [] and config.budget == "30%flops"


def test_a_resume_compares_paths_as_saved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = {**SAVED, "weights": str(tmp_path / "w.pt")}
    config, _ = resumed(saved, {"out": "/runs/a", "weights": "w.pt"})
    assert config.weights == str(tmp_path / "w.pt")
    with pytest.raises(UserError, match="--weights"):
        resumed(saved, {"out": "/runs/a", "weights": "other.pt"})


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default_or_the_value_given():
    saved = {k: v for k, v in SAVED.items() if k not in ("mask_scope", "export")}
    config, _ = resumed(saved, {"out": "/runs/a"})
    assert config.mask_scope == SearchConfig.mask_scope and config.trials == 100 and config.export is None
    config, _ = resumed(saved, {"out": "/runs/a", "export": "onnx"})
    assert config.export == "onnx"


def test_resolve_paths_makes_file_specs_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_paths(SearchConfig(model="m.py:build", data="fashion-mnist", sensitivity_from="old"))
    assert config.model == f"{tmp_path / 'm.py'}:build" and config.data == "fashion-mnist"
    assert Path(config.sensitivity_from) == tmp_path / "old"


def test_sections_each_own_their_fields():
    assert set(settings_for(SEARCH)) == set(SECTIONS)
    by_section = {title: {d.name for d in found} for title, found in settings_for(SEARCH).items()}
    assert "calib_batches" in by_section["scoring"] and "rewind" in by_section["fine-tuning"]
    assert "criterion" in by_section["pruning"] and "workers" in by_section["runner"]


def test_each_study_gets_the_options_its_parser_declares_and_all_it_needs(monkeypatch):
    import importlib
    import inspect

    from autoprune.bench import STUDIES
    from autoprune.bench import run as bench_run
    from autoprune.cli import main

    handed = {}
    monkeypatch.setattr(bench_run, "run_bench", lambda study, config, **kw: handed.update({study: (config, kw)}))
    parser = _parser()
    for study in STUDIES:
        assert main(["bench", study, "--seed", "3"]) == 0
        config, kw = handed[study]
        options = set(kw) - {"out", "resume", "quiet", "command"}
        declared = set(vars(parser.parse_args(["bench", study])))  # every option of the study's parser
        assert options == declared - set(_SHARED) - {"command", "study", "out", "resume", "quiet"}, study
        assert config.seed == 3 and set(_SHARED) <= declared
        params = inspect.signature(importlib.import_module(f"autoprune.bench.{study}").run).parameters
        keywords = {k: p for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "quiet"}
        assert options <= set(keywords), study  # every option reaches a parameter of the study
        assert {k for k, p in keywords.items() if p.default is p.empty} <= options, study  # and it needs no other
