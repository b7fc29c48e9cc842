"""The run directory (autoprune/results.py): --out/--resume checks, the files a search writes and reads
back on a resume, and subnets: their spec (``SubnetSpec``), saved and loaded."""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from autoprune import results
from autoprune.candidate import TRIAL_COLUMNS
from autoprune.errors import UserError
from autoprune.models.contract import RunContract, contract_of, set_contract
from autoprune.pruning.space import apply_kept
from autoprune.results import (
    PARETO_FIELDS,
    SPEC_FORMAT,
    RunDir,
    SubnetSpec,
    atomic_write,
    load_subnet,
)

# --- --out and --resume --------------------------------------------------------------------------


def test_without_out_a_new_run_goes_to_results_by_date(monkeypatch):
    monkeypatch.setattr(results.time, "strftime", lambda fmt: f"<{fmt}>")
    assert RunDir.check(None, resume=False).path == Path("results/<%Y%m%d-%H%M%S>")


def test_resume_needs_out():
    with pytest.raises(UserError) as error:
        RunDir.check(None, resume=True)
    assert str(error.value) == "--resume needs --out pointing at the run to continue"


def test_out_expands_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert RunDir.check("~/run", resume=False).path == tmp_path / "run"


def test_a_new_run_accepts_a_missing_or_empty_directory_and_creates_nothing(tmp_path):
    assert RunDir.check(tmp_path / "new", resume=False).path == tmp_path / "new"
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert RunDir.check(str(tmp_path / "empty"), resume=False).path == tmp_path / "empty"


@pytest.mark.parametrize("marker", ["config.yaml", "study.db"])
def test_a_run_is_resumed_not_overwritten(tmp_path, marker):
    (tmp_path / marker).write_text("")
    assert RunDir.check(tmp_path, resume=True).path == tmp_path
    with pytest.raises(UserError) as error:
        RunDir.check(tmp_path, resume=False)
    assert str(error.value) == (f"{tmp_path} already holds a run; pass --resume to continue it or choose "
                                "another --out")


def test_resume_of_something_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UserError) as error:
        RunDir.check(tmp_path, resume=True)
    assert str(error.value) == f"--resume: {tmp_path} holds no run to continue"
    with pytest.raises(UserError) as error:
        RunDir.check(tmp_path, resume=False)
    assert str(error.value) == f"{tmp_path} exists and is not empty; choose another --out"


def test_existing_needs_config_yaml(tmp_path):
    with pytest.raises(UserError) as error:
        RunDir.existing(tmp_path)
    assert str(error.value) == f"{tmp_path} holds no autoprune run (no config.yaml)"
    (tmp_path / "config.yaml").write_text("a: 1\n")
    run = RunDir.existing(str(tmp_path))
    assert run.path == tmp_path and run.is_run
    (tmp_path / "config.yaml").unlink()
    (tmp_path / "config.yaml").mkdir()  # not a file
    assert not run.is_run


# --- create and discard ---------------------------------------------------------------------------


def test_create_makes_the_run_and_its_subnets_directory(tmp_path):
    run = RunDir(tmp_path / "a" / "b")
    run.create()
    assert (tmp_path / "a" / "b" / "subnets").is_dir()
    run.discard()
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a").is_dir()
    run.create()
    run.create()  # the directory is there now (a resume): no error, and discard() only empties it
    run.discard()
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_discard_of_a_given_empty_directory_empties_it_and_leaves_what_links_point_to(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.create()
    (run.path / "subnets" / "t0001").mkdir()
    (run.path / "subnets" / "t0001" / "spec.json").write_text("{}")
    (run.path / "run.json").write_text("{}")
    (run.path / "link").symlink_to(outside, target_is_directory=True)
    run.discard()
    assert run.path.is_dir() and list(run.path.iterdir()) == []
    assert (outside / "keep.txt").read_text() == "keep"


def test_discard_without_create_or_of_a_vanished_directory_does_nothing(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "keep").write_text("")
    run.discard()
    assert (tmp_path / "keep").exists()
    gone = RunDir(tmp_path / "gone")
    gone.create()
    shutil.rmtree(gone.path)
    gone.discard()  # create() was called, the directory is gone: nothing to do, no error
    assert not gone.path.exists()


# --- has_results ----------------------------------------------------------------------------------


def test_has_results(tmp_path):
    run = RunDir(tmp_path)
    assert not run.has_results
    (tmp_path / "trials.csv").write_text("")
    assert not run.has_results  # empty file
    (tmp_path / "trials.csv").write_text("number,state\n")
    assert not run.has_results  # a header, no trial
    (tmp_path / "trials.csv").write_text("number,state\n0,complete\n")
    assert run.has_results
    (tmp_path / "trials.csv").unlink()
    (tmp_path / "sensitivity.csv").write_text("")
    assert run.has_results


def test_a_half_written_trials_csv_defers_to_the_study(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "trials.csv").write_bytes(b"number,state\n0,\xff\xfe\n")  # cannot be decoded
    assert not run.has_results
    (tmp_path / "study.db").write_text("")
    assert run.has_results
    (tmp_path / "study.db").unlink()
    (tmp_path / "study.db").mkdir()
    assert not run.has_results  # a file, not a directory


# --- the files ------------------------------------------------------------------------------------


def test_storage_url_is_the_absolute_study_db(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunDir(Path("run")).storage_url == f"sqlite:///{tmp_path / 'run' / 'study.db'}"


def test_config_round_trip_keeps_the_key_order(tmp_path):
    run = RunDir(tmp_path)
    run.write_config({"zeta": 1, "alpha": [1, 2]})
    assert (tmp_path / "config.yaml").read_text() == "zeta: 1\nalpha:\n- 1\n- 2\n"
    assert run.read_config() == {"zeta": 1, "alpha": [1, 2]}
    (tmp_path / "config.yaml").write_text("")
    assert run.read_config() == {}


def test_status_updates_merge_into_run_json(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_status() == {}
    run.write_status(status="running", workers=2)
    run.write_status(status="complete")
    assert run.read_status() == {"status": "complete", "workers": 2}
    assert (tmp_path / "run.json").read_text() == '{\n  "status": "complete",\n  "workers": 2\n}\n'


def test_baseline_comes_from_pareto_json(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_baseline() is None
    (tmp_path / "pareto.json").write_text(json.dumps({"baseline": {"macs": 10}, "front": []}))
    assert run.read_baseline() == {"macs": 10}
    (tmp_path / "pareto.json").unlink()
    (tmp_path / "pareto.json").mkdir()
    assert run.read_baseline() is None


def test_exports_of_a_subnet(tmp_path):
    run = RunDir(tmp_path)
    assert run.subnet_dir("t0003") == tmp_path / "subnets" / "t0003"
    assert run.read_exports("t0003") == {}
    run.subnet_dir("t0003").mkdir(parents=True)
    (run.subnet_dir("t0003") / "exports.json").write_text('{"onnx": {"ok": true}}')
    assert run.read_exports("t0003") == {"onnx": {"ok": True}}
    assert run.read_exports("t0004") == {}


def test_trials_csv_grows_a_row_at_a_time_with_one_header(tmp_path):
    run = RunDir(tmp_path)
    run.append_trial({"number": 1, "state": "complete", "macs": 10})
    run.append_trial({"number": 0, "state": "fail", "macs": 20})
    assert (tmp_path / "trials.csv").read_text() == "number,state,macs\n1,complete,10\n0,fail,20\n"
    trials = run.read_trials()
    assert list(trials.columns) == TRIAL_COLUMNS
    assert trials["number"].tolist() == [0, 1]  # sorted by number
    assert trials["macs"].tolist() == [20, 10]


def test_trials_before_the_first_and_from_an_older_run(tmp_path):
    run = RunDir(tmp_path)
    empty = run.read_trials()
    assert list(empty.columns) == TRIAL_COLUMNS and empty.empty
    (tmp_path / "trials.csv").write_text("")
    assert list(run.read_trials().columns) == TRIAL_COLUMNS
    (tmp_path / "trials.csv").write_text("ratio:conv1,number,macs\n0.5,3,7\n")
    trials = run.read_trials()
    assert list(trials.columns) == [*TRIAL_COLUMNS, "ratio:conv1"]
    assert trials.loc[0, "ratio:conv1"] == 0.5 and trials.loc[0, "macs"] == 7
    assert trials["error"].isna().all()


def test_write_table_replaces_the_file_at_once(tmp_path, monkeypatch):
    replaced = []
    real = results.os.replace
    monkeypatch.setattr(results.os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))),
                                                                 real(src, dst)))
    RunDir(tmp_path).write_table("pareto.csv", pd.DataFrame({"id": ["t1"], "macs": [5]}))
    assert (tmp_path / "pareto.csv").read_text() == "id,macs\nt1,5\n"
    assert replaced == [(tmp_path / ".pareto.csv.tmp", tmp_path / "pareto.csv")]


def test_atomic_write_goes_through_a_hidden_file_beside_the_target(tmp_path, monkeypatch):
    replaced = []
    real = results.os.replace
    monkeypatch.setattr(results.os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))),
                                                                 real(src, dst)))
    atomic_write(tmp_path / "run.json", "{}\n")
    assert (tmp_path / "run.json").read_text() == "{}\n"
    assert replaced == [(tmp_path / ".run.json.tmp", tmp_path / "run.json")]
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


# --- subnets --------------------------------------------------------------------------------------

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


@pytest.fixture(scope="module")
def pruned():
    model = _small()
    kept = {"0": [1, 2, 5, 7], "3": [0, 4, 5]}  # group roots by module name: the kept channel indices
    subnet = apply_kept(copy.deepcopy(model), X[:1], kept, {"0": 8, "3": 6})
    return model, subnet


# --- SubnetSpec: spec.json ----------------------------------------------------------------------------

SPEC_KEYS = ["format", "id", "trial", "model", "data", "in_channels", "num_classes", "input_shape", "granularity",
             "seed", "criterion", "mask_scope", "base_weights", "ratios", "channels", "kept", "macs", "params",
             "proxy_acc", "test_acc", "holdout_acc", "finetune_epochs", "finetune_seconds", "retrain", "latency_ms",
             "predicted_latency_ms", "latency_spread", "speedup", "speedup_spread", "target", "latency_batch",
             "device", "contract"]
RETRAIN = {"rewind": "lottery", "rewind_epoch": None, "schedule": "one-shot", "steps": 1, "distill": None,
           "lr": 0.01, "epochs": 0.5}


def test_a_spec_saves_and_loads_back_field_for_field(tmp_path, pruned, subnet_spec):
    _, subnet = pruned
    spec = subnet_spec(retrain=RETRAIN, predicted_latency_ms=1.75)
    saved = spec.save(tmp_path / "t0001", subnet)
    assert spec.path is None and spec.contract is None  # the spec saved is left as it was
    assert saved == replace(spec, contract={"layout": "channels_last", "output_key": None})
    assert saved.path == str(tmp_path / "t0001")
    text = (tmp_path / "t0001" / "spec.json").read_text()
    assert list(json.loads(text)) == SPEC_KEYS  # the fields of autoprune.subnet/1, in their order
    assert text == json.dumps(json.loads(text), indent=2) + "\n"
    for where in (tmp_path / "t0001", tmp_path / "t0001" / "spec.json", str(tmp_path / "t0001")):
        loaded = SubnetSpec.load(where)
        assert loaded == saved and loaded.path == str(tmp_path / "t0001")
        assert loaded.__dict__ == saved.__dict__  # the path too, which == leaves out


def test_an_older_spec_loads_with_defaults_for_the_fields_it_predates(tmp_path, subnet_spec):
    """The fields of the first autoprune.subnet/1 specs; granularity, retrain, the latencies, device and
    contract came later."""
    first = {k: v for k, v in subnet_spec().to_json().items()
             if k not in ("granularity", "mask_scope", "retrain", "latency_ms", "predicted_latency_ms",
                          "latency_spread", "speedup", "speedup_spread", "target", "latency_batch", "device",
                          "contract")}
    (tmp_path / "spec.json").write_text(json.dumps({**first, "a_later_field": 1}))  # one it does not know: left out
    spec = SubnetSpec.load(tmp_path)
    assert (spec.granularity, spec.mask_scope, spec.retrain, spec.predicted_latency_ms, spec.latency_spread,
            spec.speedup, spec.speedup_spread, spec.target, spec.latency_batch, spec.device, spec.contract) == (
        "filter", None, None, None, None, None, None, None, None, None, None)
    assert math.isnan(spec.latency_ms)
    assert (spec.macs, spec.params, spec.proxy_acc, spec.test_acc, spec.holdout_acc, spec.seed) == (
        1234, 567, 0.625, 0.8125, 0.75, 11)
    assert spec.retrain_text == "fine-tune"


def test_a_spec_without_a_field_every_spec_has_is_refused(tmp_path, subnet_spec):
    record = subnet_spec().to_json()
    del record["kept"], record["macs"]
    (tmp_path / "spec.json").write_text(json.dumps(record))
    with pytest.raises(ValueError) as error:
        SubnetSpec.load(tmp_path)
    assert str(error.value) == f"{tmp_path / 'spec.json'} lacks kept, macs"
    (tmp_path / "spec.json").write_text("[]")
    with pytest.raises(ValueError, match="is not an autoprune subnet spec"):
        SubnetSpec.load(tmp_path)


def test_pareto_rows_of_a_spec(subnet_spec):
    spec = replace(subnet_spec(retrain=RETRAIN, predicted_latency_ms=1.75), path="/runs/a/subnets/t0001")
    assert spec.front_record() == {
        "id": "t0001", "trial": 1, "macs": 1234, "params": 567, "proxy_acc": 0.625, "test_acc": 0.8125,
        "holdout_acc": 0.75, "finetune_seconds": 2.25, "latency_ms": 1.5, "predicted_latency_ms": 1.75,
        "speedup": 1.625, "ratios": {"0": 0.5, "3": 0.5}, "path": "/runs/a/subnets/t0001", "retrain": "lottery (init), 0.5 epochs"}
    assert list(spec.front_record()) == list(PARETO_FIELDS)
    row = spec.row()
    assert list(row) == ["id", "trial", "macs", "params", "proxy_acc", "test_acc", "holdout_acc",
                         "finetune_seconds", "latency_ms", "predicted_latency_ms", "speedup", "path", "retrain"]
    assert row == {k: v for k, v in spec.front_record().items() if k != "ratios"}


# --- subnets that load ----------------------------------------------------------------------------


def test_a_saved_subnet_loads_pruned_with_its_weights(tmp_path, pruned, subnet_spec):
    model, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json", "weights.pt"]
    saved = json.loads((tmp_path / "spec.json").read_text())
    assert next(iter(saved)) == "format" and saved["format"] == SPEC_FORMAT == "autoprune.subnet/1"
    assert saved["contract"] == {"layout": "channels_last", "output_key": None}
    for path in (tmp_path, tmp_path / "spec.json"):
        loaded = load_subnet(path, base_model=model)
        assert not loaded.training
        assert [m.out_channels for m in loaded if isinstance(m, nn.Conv2d)] == [4, 3]
        torch.testing.assert_close(loaded(X), subnet.eval()(X))
    assert model[0].out_channels == 8  # the base model is copied, not pruned


def test_a_subnet_whose_weights_were_cut_short_is_refused_in_one_line(tmp_path, pruned, subnet_spec):
    model, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    weights = tmp_path / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy that stopped part way
    with pytest.raises(UserError) as info:
        load_subnet(tmp_path, base_model=model)
    assert str(info.value) == (f"subnet weights {weights} cannot be read as a state dict: its archive is damaged "
                               "(cut short, or not saved fully)")


def test_a_subnet_without_its_weights_is_refused_in_one_line(tmp_path, pruned, subnet_spec):
    model, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(UserError) as info:
        load_subnet(tmp_path, base_model=model)
    assert str(info.value) == f"subnet weights {tmp_path / 'weights.pt'} cannot be read as a state dict: No such file or directory"


def test_a_subnet_keeps_the_contract_it_ran_with(tmp_path, pruned, subnet_spec):
    model, subnet = pruned
    subnet_spec().save(tmp_path, set_contract(copy.deepcopy(subnet), RunContract("contiguous", "logits")))
    assert json.loads((tmp_path / "spec.json").read_text())["contract"] == {"layout": "contiguous",
                                                                             "output_key": "logits"}
    assert contract_of(load_subnet(tmp_path, base_model=model)) == RunContract("contiguous", "logits")
    subnet_spec(contract={"layout": "contiguous", "output_key": None}).save(tmp_path, subnet)
    assert contract_of(load_subnet(tmp_path, base_model=model)) == RunContract("contiguous", None)


def test_an_older_spec_without_a_contract_runs_by_default(tmp_path, pruned, subnet_spec):
    _, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    saved = json.loads((tmp_path / "spec.json").read_text())
    del saved["contract"]
    (tmp_path / "spec.json").write_text(json.dumps(saved))
    base = set_contract(_small(), RunContract("contiguous", "logits"))
    assert contract_of(load_subnet(tmp_path, base_model=base)) == RunContract("contiguous", "logits")


def test_a_weight_pruned_subnet_keeps_its_masks_and_dense_shape(tmp_path, subnet_spec):
    masks = {"conv1.weight": torch.rand(16, 1, 3, 3) > 0.5}
    spec = subnet_spec(model="resnet20", granularity="weight", kept={"conv1": 8},  # not filter-pruned
                       channels={"conv1": 16})
    from autoprune.models import create_model

    resnet = create_model("resnet20", in_channels=1, num_classes=3).eval()
    spec.save(tmp_path, resnet, masks=masks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.pt", "spec.json", "weights.pt"]
    assert torch.equal(torch.load(tmp_path / "masks.pt")["conv1.weight"], masks["conv1.weight"])
    loaded = load_subnet(tmp_path)  # built from the spec's model
    assert type(loaded) is type(resnet) and not loaded.training
    torch.testing.assert_close(loaded(torch.ones(1, 1, 8, 8)), resnet(torch.ones(1, 1, 8, 8)))


def test_what_is_not_a_subnet_is_refused(tmp_path, pruned, subnet_spec):
    model, subnet = pruned
    (tmp_path / "spec.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError) as error:
        load_subnet(tmp_path, base_model=model)
    assert str(error.value) == f"{tmp_path / 'spec.json'} is not an autoprune subnet spec"
    subnet_spec(model=None).save(tmp_path, subnet)  # searched from a Python object
    with pytest.raises(ValueError) as error:
        load_subnet(tmp_path)
    assert str(error.value) == "this subnet was searched from a Python model object: pass base_model="


def test_weights_that_are_not_plain_tensors_are_refused(tmp_path, pruned, subnet_spec):
    model, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    torch.save({"0.weight": Path("anything")}, tmp_path / "weights.pt")
    with pytest.raises(UserError, match=r"holds a pickled pathlib\.\w*Path, and autoprune unpickles no objects"):
        load_subnet(tmp_path, base_model=model)


def test_save_makes_the_directories_it_needs(tmp_path, pruned, subnet_spec):
    _, subnet = pruned
    subnet_spec().save(tmp_path / "subnets" / "t0001", subnet)
    assert (tmp_path / "subnets" / "t0001" / "spec.json").is_file()


def test_a_subnet_is_refused_on_a_base_model_of_other_widths(tmp_path, pruned, subnet_spec):
    _, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    other = nn.Sequential(nn.Conv2d(1, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(), nn.Conv2d(10, 6, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with pytest.raises(ValueError) as error:
        load_subnet(tmp_path, base_model=other)
    assert str(error.value) == "group '0' has 10 channels, expected 8"


def test_a_lazy_base_model_takes_its_shapes_before_pruning(tmp_path, pruned, subnet_spec):
    _, subnet = pruned
    subnet_spec().save(tmp_path, subnet)
    lazy = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    loaded = load_subnet(tmp_path, base_model=lazy)
    torch.testing.assert_close(loaded(X), subnet.eval()(X))
