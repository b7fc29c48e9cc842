"""Where trials run: the settings that choose a Ray cluster and what each trial gets on it."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from autoprune.errors import UserError
from autoprune.settings import setting


@dataclass
class RaySettings:
    """The Ray settings parsed (``RunnerSettings.ray_settings``): the ``address`` of an existing cluster
    (``auto`` or host:port) or ``local_workers`` CPUs of a new local Ray, ``workers`` concurrent trials, and
    the CPUs and GPUs each trial reserves (fractions allowed)."""

    address: str | None = None  # an existing cluster ("auto" or host:port)
    local_workers: int | None = None  # or start a local Ray with this many CPUs
    workers: int = 1  # concurrent trials
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


def parse_resources(text: str) -> tuple[float, float]:
    """``cpu=1,gpu=0.25`` -> (1.0, 0.25): CPUs and GPUs of one trial (defaults 1 and 0). Raises ``UserError``
    for an unknown resource, a value that is not a number or is negative, or no CPU."""
    values = {"cpu": 1.0, "gpu": 0.0}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in values:
            raise UserError(f"--trial-resources: unknown resource {key!r} (use cpu=N,gpu=F)")
        try:
            values[key] = float(value)
        except ValueError:
            raise UserError(f"--trial-resources: {part!r} is not resource=number") from None
        if values[key] < 0:
            raise UserError(f"--trial-resources: {key} must not be negative")
    if values["cpu"] <= 0:
        raise UserError("--trial-resources: a trial needs some cpu")
    return values["cpu"], values["gpu"]


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One line instead of minutes of Ray's reconnect warnings where nothing listens at ``host:port``: a
    ``UserError`` where a TCP connection fails within ``timeout`` seconds. ``auto`` and URLs are not tried."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                        "with `ray start --head` or check the address") from None




@dataclass(frozen=True)
class RunnerSettings:
    """In this process (the default), on the Ray cluster at ``ray_address`` (host:port, or ``auto``), or on a
    new loopback-only Ray of ``ray_local`` CPUs; ``workers`` trials at once, each with ``trial_resources``
    (``cpu=1,gpu=0.25``)."""

    ray_address: str | None = setting(
        None, "run the trials on this Ray cluster (host:port, or auto for the one this machine joined)",
        metavar="ADDRESS")
    ray_local: int | None = setting(
        None, "start a Ray on this machine with N CPUs (loopback only) and run the trials on it", metavar="N")
    workers: int = setting(1, "concurrent trials on Ray")
    trial_resources: str = setting("cpu=1,gpu=0", "Ray resources of one trial, e.g. cpu=1,gpu=0.25")

    @property
    def uses_ray(self) -> bool:
        """Whether trials and fine-tunes run on Ray."""
        return self.ray_address is not None or self.ray_local is not None

    def ray_settings(self) -> RaySettings:
        """The parsed Ray settings; raises ``UserError`` on malformed ``trial_resources``."""
        cpus, gpus = parse_resources(self.trial_resources)
        return RaySettings(self.ray_address, self.ray_local, self.workers, cpus, gpus)

    def check_runner(self) -> None:
        """The runner settings' own checks, reaching ``ray_address`` where given (one line if nothing listens
        there); raises ``UserError``."""
        if self.ray_address is not None and self.ray_local is not None:
            raise UserError("give --ray-address (an existing cluster) or --ray-local N (a new local Ray), not both")
        if self.workers < 1 or (self.ray_local is not None and self.ray_local < 1):
            raise UserError("--workers and --ray-local must be at least 1")
        if self.uses_ray:
            self.ray_settings()  # checks --trial-resources
        if self.ray_address is not None:  # before any progress bar is drawn
            check_reachable(self.ray_address)
