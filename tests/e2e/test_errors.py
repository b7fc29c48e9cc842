"""Bad input stops before any work: one line 'autoprune: error: ...', exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoprune.cli import main
from autoprune.models import create_model


def _run(args, capsys) -> tuple[int, list[str]]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--model", "nosuchnet", "unknown model"),
        ("--data", "nosuchdata", "unknown data"),
        ("--data", "fashion-mnist:/nonexistent/dir", "not found"),
        ("--data", "cifar10:/nonexistent/dir", "not found"),
        ("--budget", "150%flops", "percentage"),
        ("--budget", "0%flops", "percentage"),
        ("--budget", "abc", "not understood"),
        ("--budget", "1%flops", "cannot be met"),
        ("--budget", "60MMACs", "prunes nothing: the unpruned model is within it"),  # of about 10M MACs
        ("--weights", "/nonexistent/w.pt", "not found"),
        ("--strategy", "nosuch", "invalid choice"),
        ("--criterion", "nosuch", "invalid choice"),
        ("--space", "/nonexistent/space.yaml", "not found"),
        ("--rewind", "lottery", "`autoprune train --save-init --out "),  # the tiny weights kept no initialisation
        ("--rewind", "nosuch", "invalid choice"),
        ("--rewind-epoch", "1", "goes with --rewind lottery"),
        ("--steps", "0", "--steps must be at least 1"),
        ("--distill-weight", "1.5", "--distill-weight"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, tiny_search_args, flag, value, needle):
    out = tmp_path / "run"
    code, lines = _run(_replace(tiny_search_args, flag, value) + ["--out", str(out)], capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("autoprune: error:") and needle in lines[0], lines
    assert not out.exists()


def test_a_budget_part_the_unpruned_model_meets_is_said(tmp_path, capsys, tiny_search_args):
    args = _replace(tiny_search_args, "--budget", "50%flops,1Mparams") + ["--trials", "1", "--finetune-top", "0",
                                                                       "--out", str(tmp_path / "r")]
    code, lines = _run(args, capsys)
    assert code == 0
    assert any(line.startswith("budget part 1Mparams (<= 1.000M params, ") and line.endswith(
        "of baseline) constrains nothing: the unpruned model is within it") for line in lines), lines
    assert not any("little room" in line for line in lines)  # its smallest subnet takes a third of the budget


def test_a_budget_the_smallest_subnet_nearly_fills_is_said(tmp_path, capsys, tiny_search_args):
    from autoprune.models import model_family
    from autoprune.pruning.config import load_space_config
    from autoprune.pruning.space import PruningSpace

    model = create_model("resnet20", in_channels=1, num_classes=4).eval()
    space = PruningSpace(model, torch.randn(1, 1, 16, 16), load_space_config(None, model_family("resnet20")))
    smallest = space.smallest_cost().macs  # the search's own space: the family's space file
    share = 0.95
    budget = f"{smallest / share:.0f}MACs"
    args = _replace(tiny_search_args, "--budget", budget) + ["--trials", "1", "--finetune-top", "0",
                                                            "--out", str(tmp_path / "r")]
    code, lines = _run(args, capsys)
    assert code == 0, lines
    note = (f"budget {budget} leaves the search little room: the smallest subnet of the space (every group at its "
            f"smallest width) already takes {share:.1%} of it, so the candidates differ little (raise ratio.max in "
            "the space file, or loosen the budget)")
    assert [line for line in lines if "little room" in line] == [note], lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_cuda_without_a_gpu(tmp_path, capsys, tiny_search_args):
    code, lines = _run(tiny_search_args + ["--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not (tmp_path / "r").exists()


def test_weights_of_another_model(tmp_path, capsys, tiny_search_args):
    weights = tmp_path / "resnet32.pt"
    torch.save(create_model("resnet32", in_channels=1, num_classes=4).state_dict(), weights)
    code, lines = _run(_replace(tiny_search_args, "--weights", str(weights)) + ["--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(lines) == 1 and "do not fit" in lines[0]
    assert not (tmp_path / "r").exists()


def test_out_holding_another_run_needs_resume(tmp_path, capsys, tiny_search_args):
    out = str(tmp_path / "run")
    assert main(tiny_search_args + ["--trials", "1", "--finetune-top", "0", "--out", out]) == 0
    capsys.readouterr()
    code, lines = _run(tiny_search_args + ["--trials", "1", "--out", out], capsys)
    assert code == 2 and len(lines) == 1 and "--resume" in lines[0]
    code, lines = _run(_replace(tiny_search_args, "--budget", "30%flops") + ["--out", out, "--resume"], capsys)
    assert code == 2 and len(lines) == 1 and "differs from the run's" in lines[0]


def test_resume_without_a_run(tmp_path, capsys, tiny_search_args):
    code, lines = _run(tiny_search_args + ["--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and len(lines) == 1 and "no run" in lines[0]


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--budget", "abc",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("autoprune: error:")


def test_rewinding_needs_what_train_saved(tmp_path, capsys, tiny_search_args):
    args = tiny_search_args + ["--rewind", "lottery", "--rewind-epoch", "2", "--out", str(tmp_path / "r")]
    code, lines = _run(args, capsys)
    assert code == 2 and len(lines) == 1 and "`autoprune train --save-init-epoch 2 --out " in lines[0]
    code, lines = _run(["search", "--rewind", "lottery", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(lines) == 1 and "no saved initialisation of a shipped checkpoint" in lines[0]
    weights = Path(tiny_search_args[tiny_search_args.index("--weights") + 1])
    torch.save(create_model("resnet32", in_channels=1, num_classes=4).state_dict(), tmp_path / "w.init.pt")
    (tmp_path / "w.pt").write_bytes(weights.read_bytes())
    code, lines = _run(_replace(tiny_search_args, "--weights", str(tmp_path / "w.pt"))
                       + ["--rewind", "lottery", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(lines) == 1 and "w.init.pt" in lines[0] and "do not fit" in lines[0]
    code, lines = _run(tiny_search_args + ["--rewind", "scratch-e", "--schedule", "iterative", "--out", str(tmp_path / "r")],
                       capsys)
    assert code == 2 and len(lines) == 1 and "does not go with --schedule iterative" in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_ray_address_where_nothing_listens_is_one_line(tmp_path, capsys, tiny_search_args):
    """Not minutes of Ray's reconnect warnings: port 1 on loopback refuses at once."""
    out = tmp_path / "run"
    code, lines = _run(tiny_search_args + ["--ray-address", "127.0.0.1:1", "--out", str(out)], capsys)
    assert code == 2
    assert lines == [("autoprune: error: --ray-address 127.0.0.1:1: no Ray cluster answers there (Connection refused); "
                      "start one with `ray start --head` or check the address")]
    assert not out.exists()
