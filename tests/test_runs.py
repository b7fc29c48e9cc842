"""``autoprune runs``: the runs under a directory, each once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from autoprune.errors import UserError
from autoprune.runs import list_runs


def _run(path, started: str) -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"model": "resnet20", "data": "fashion-mnist",
                                                      "budget": "50%flops", "strategy": "tpe", "trials": 2}))
    (path / "run.json").write_text(json.dumps({"status": "complete", "started": started}))
    pd.DataFrame({"number": [0, 1], "state": ["complete", "infeasible"]}).to_csv(path / "trials.csv", index=False)


def test_a_link_to_a_listed_run_is_not_listed_again(tmp_path):
    _run(tmp_path / "demo-1", "2026-11-30T10:00:00")
    _run(tmp_path / "other", "2026-11-30T09:00:00")
    (tmp_path / "demo").symlink_to("demo-1")
    (tmp_path / "elsewhere").mkdir()
    _run(tmp_path / "elsewhere" / "kept", "2026-11-30T11:00:00")
    (tmp_path / "outside").symlink_to(tmp_path / "elsewhere" / "kept")  # a link to a run not listed here: listed
    runs = list_runs(tmp_path)
    assert [r["run"] for r in runs] == [str(tmp_path / n) for n in ("other", "demo-1", "outside")]
    assert runs[1]["trials"] == "2/2" and runs[1]["status"] == "complete"


def test_not_a_directory(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        list_runs(tmp_path / "none")
