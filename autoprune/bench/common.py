"""What every benchmark study shares: its output directory, a journal that makes it resumable,
the machine it ran on, and the summary that records the exact command."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from autoprune.errors import UserError
from autoprune.pipeline import SearchConfig
from autoprune.progress import console


def machine() -> str:
    """One line naming the CPU (or GPU) and thread count the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def command_line() -> str:
    """The command that is running, as a user would type it."""
    if Path(sys.argv[0]).name == "autoprune":
        return "autoprune " + shlex.join(sys.argv[1:])
    return "python API: " + shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


class BenchDir:
    """``results/bench/<study>/``: bench.json (settings, command, machine), journal.jsonl (every
    finished unit of work, so an interrupted study resumes where it stopped), CSV, PNG, summary.md."""

    def __init__(self, path: str | Path, study: str, settings: dict[str, Any], *, resume: bool) -> None:
        self.path = Path(path).expanduser()
        self.study = study
        meta = self.path / "bench.json"
        settings = json.loads(json.dumps(settings))  # the form it is saved in, for comparison
        if meta.exists():
            saved = json.loads(meta.read_text())
            if not resume:
                raise UserError(f"{self.path} already holds a {saved['study']} benchmark; pass --resume to "
                                "continue it or choose another --out")
            if saved["study"] != study or saved["settings"] != settings:
                changed = sorted(k for k in set(settings) | set(saved["settings"])
                                 if settings.get(k) != saved["settings"].get(k))
                raise UserError(f"--resume: settings differ from the benchmark in {self.path}: {', '.join(changed) or 'study'}")
        elif resume:
            raise UserError(f"--resume: {self.path} holds no benchmark to continue")
        elif self.path.exists() and any(self.path.iterdir()):
            raise UserError(f"{self.path} exists and is not empty; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        if not meta.exists():
            meta.write_text(json.dumps({"study": study, "settings": settings, "command": command_line(),
                                        "machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                       indent=2) + "\n")
        self._journal = self.path / "journal.jsonl"
        self._done: dict[str, dict] = {}
        if self._journal.exists():
            for line in self._journal.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self._done[entry["key"]] = entry["value"]

    def done(self, key: str) -> dict | None:
        """What a finished unit of work recorded, or None if it has not run yet."""
        return self._done.get(key)

    def record(self, key: str, value: dict) -> dict:
        with open(self._journal, "a") as fh:
            fh.write(json.dumps({"key": key, "value": value}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._done[key] = value
        return value

    def log(self, text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {self.study}: {text}")

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.path / name
        frame.to_csv(path, index=False, float_format="%.6g")
        return path

    def save_figure(self, fig, name: str) -> Path:
        import matplotlib.pyplot as plt

        path = self.path / name
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def write_summary(self, title: str, body: str) -> Path:
        meta = json.loads((self.path / "bench.json").read_text())
        header = (f"# {title}\n\n"
                  f"Command: `{meta['command']}`\n\n"
                  f"Machine: {meta['machine']}. Started {meta['started']}; this part took "
                  f"{(time.perf_counter() - self.started) / 60:.1f} min.\n\n")
        path = self.path / "summary.md"
        path.write_text(header + body.strip() + "\n")
        console.print(f"{self.study}: {path}")
        return path


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), dpi=110, squeeze=False)


def settings_of(config: SearchConfig, **study: Any) -> dict[str, Any]:
    """A study's settings: the search options it uses, then its own."""
    return {**asdict(config), **study}


def table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A markdown table (no extra dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
