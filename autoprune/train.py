"""Baseline training and fine-tuning: SGD with Nesterov momentum and a per-step cosine schedule.

One loop for every kind of training: a baseline, the fine-tune of a pruned subnet, and the same
with knowledge distillation from a teacher (the unpruned network).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import DataBundle, load_data
from autoprune.data.bundle import augment_batch
from autoprune.device import resolve_device
from autoprune.errors import UserError
from autoprune.measure import accuracy, to_device
from autoprune.models import create_model, prepare_model
from autoprune.models.contract import contract_of, input_to, logits_of
from autoprune.progress import console, progress_bar


@dataclass
class TrainResult:
    """What ``train`` did: the optimiser ``steps`` taken, the ``epochs`` they make (fractional), ``final_loss``,
    the moving average of the training loss (decay 0.98; NaN where nothing was trained), and the wall-clock
    ``seconds``."""

    steps: int
    epochs: float
    final_loss: float
    seconds: float


def train(
    model: nn.Module,
    data: DataBundle,
    *,
    epochs: float,
    lr: float = 0.1,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    device: str = "cpu",
    seed: int = 0,
    augment: bool = True,
    description: str = "train",
    quiet: bool = False,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    distill_weight: float = 0.9,
    bn_l1: float = 0.0,
    masks: Mapping[str, torch.Tensor] | None = None,
    after_epoch: Callable[[int], None] | None = None,
    amp: bool = False,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` (fractions allowed) over ``data.train``.

    With a ``teacher``, the loss is ``distillation_loss`` against its outputs on the same (augmented)
    batch; the teacher runs in eval mode without gradients and is moved to ``device``, so pass a copy
    of a model that must stay where it is. ``bn_l1`` > 0 adds ``bn_l1 * sum |gamma|`` over every
    BatchNorm scale to the loss (network slimming's sparsity training, Liu et al. 2017), as the
    subgradient ``bn_l1 * sign(gamma)`` added to the scales' gradients. ``masks`` (parameter name ->
    boolean tensor, ``autoprune.pruning.weights.weight_masks``) keep a weight-pruned model's zeros:
    the gradients are masked, so weight decay and momentum never move a zero either.
    ``after_epoch(k)`` is called once epoch ``k`` (1, 2, ...) is complete, with the model still in
    train mode: a snapshot there is the state after k epochs. ``amp`` (CUDA only) runs the forward
    passes in float16 under autocast, with a gradient scaler so that small gradients do not vanish.

    ``lr`` is the first step's learning rate, which follows a cosine down to 0 at the end. Returns a
    ``TrainResult``; the model is left on ``device`` in eval mode, and ``epochs`` <= 0 trains nothing.
    Raises ``UserError`` where ``amp`` is set on a device other than CUDA.
    """
    if epochs <= 0:
        return TrainResult(0, 0.0, float("nan"), 0.0)
    check_amp(amp, device)
    # Denormal floats run up to 100x slower on x86 CPUs; flush them to zero.
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    model = to_device(model, device)
    hooks = _nchw_where_onednn_fails(model, device)
    n = len(data.train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, math.ceil(epochs * steps_per_epoch - 1e-9))  # epochs_of_steps(k) gives k steps exactly
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    generator = torch.Generator().manual_seed(seed)
    aug = data.augment if augment else ()
    key = contract_of(model).output_key
    if teacher is not None:
        teacher = to_device(teacher, device).eval()
        teacher_key, teacher_layout = contract_of(teacher).output_key, contract_of(teacher).layout
    scales = [m.weight for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.requires_grad]
    parameters = dict(model.named_parameters())
    hooks += [parameters[name].register_hook(_masking(mask.to(device))) for name, mask in (masks or {}).items()]
    model.train()
    step, loss_value = 0, float("nan")
    running = 0.0
    with progress_bar(description, total_steps, quiet=quiet) as bar:
        while step < total_steps:
            order = torch.randperm(n, generator=generator)
            for start_idx in range(0, n, batch_size):
                if step >= total_steps:
                    break
                idx = order[start_idx : start_idx + batch_size]
                x = augment_batch(data.train.x[idx], aug, generator) if aug else data.train.x[idx]
                x, y = _batch_to(x, data.train.y[idx], device, model)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    logits = logits_of(model(x), key)
                    if teacher is None:
                        loss = F.cross_entropy(logits, y)
                    else:
                        with torch.no_grad():
                            target = logits_of(teacher(input_to(x, teacher_layout)), teacher_key)
                        loss = distillation_loss(logits, target, y, temperature=temperature, weight=distill_weight)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # the true gradients, for the L1 subgradient below (no-op without amp)
                if bn_l1 > 0:
                    with torch.no_grad():
                        for gamma in (g for g in scales if g.grad is not None):
                            gamma.grad.add_(torch.sign(gamma), alpha=bn_l1)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                step += 1
                loss_value = loss.item()
                running = loss_value if step == 1 else 0.98 * running + 0.02 * loss_value
                bar.advance()
                if step % 20 == 0:
                    bar.note(f"loss {running:.3f}")
                if after_epoch is not None and step % steps_per_epoch == 0:
                    after_epoch(step // steps_per_epoch)
    for hook in hooks:
        hook.remove()
    model.eval()
    return TrainResult(step, step / steps_per_epoch, running, time.perf_counter() - start)


def epochs_of_steps(steps: int, images: int, batch_size: int) -> float:
    """The ``epochs`` that make ``train`` take exactly ``steps`` steps over ``images`` training images in batches
    of ``batch_size`` (an epoch is ``ceil(images / batch_size)`` steps, its last batch the remainder)."""
    return steps / math.ceil(images / batch_size)


def check_amp(amp: bool, device: str) -> None:
    """Raise ``UserError`` where ``amp`` (float16 mixed precision) is asked for on a device that is not CUDA."""
    if amp and torch.device(device).type != "cuda":
        raise UserError("--amp (float16 mixed precision) needs --device cuda")


def _nchw_where_onednn_fails(model: nn.Module, device: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Put the convolutions that oneDNN cannot train in channels_last into NCHW; the hooks to remove.

    oneDNN's 1x1 backward-weights kernel overruns its workspace for a strided 1x1 convolution with
    fewer input channels than its channel block (8 with AVX2, 16 with AVX-512) in channels_last
    (oneDNN issue 6035): here the fine-tune of a pruned ResNet-56, whose stride-2 shortcut kept 5
    input channels, hung in the kernel's thread barrier within a few steps. In NCHW, weights and
    input alike, oneDNN takes its blocked path, which is sound.
    """
    if torch.device(device).type != "cpu":
        return []
    hooks = []
    for module in model.modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                and module.in_channels // module.groups < 16):
            module.to(memory_format=torch.contiguous_format)
            hooks.append(module.register_forward_pre_hook(lambda _, args: args[0].contiguous()))
    return hooks


def _masking(keep: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A gradient hook that zeroes the gradient where ``keep`` is false."""
    return lambda grad: grad * keep


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, *, temperature: float,
                      weight: float) -> torch.Tensor:
    """Hinton et al. (2015): ``(1 - weight) * CE(logits, y) + weight * T^2 * KL(p_teacher || p_student)``.

    ``logits`` and ``teacher_logits`` are ``(N, classes)``, ``y`` is ``(N,)`` class indices; returns a scalar.
    Both distributions are softened by the temperature T; the KL divergence is summed over classes
    and averaged over the batch. The T^2 keeps the soft term's gradients on the scale of the hard
    term's whatever T is, so ``weight`` means the same at every temperature.
    """
    hard = F.cross_entropy(logits, y)
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * temperature**2 * soft


def _batch_to(x: torch.Tensor, y: torch.Tensor, device: str, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device`` in ``model``'s layout (``autoprune.models.contract``)."""
    return input_to(x, model, device, non_blocking=True), y.to(device, non_blocking=True)


def rewind_weights_path(weights: str | Path, epoch: int | None = None) -> Path:
    """Where ``autoprune train --save-init`` leaves the weights a lottery ticket rewinds to: ``X.init.pt``
    next to ``X.pt`` (the initialisation), or with ``--save-init-epoch K`` ``X.epoch<K>.pt`` (after epoch K)."""
    return Path(weights).with_suffix(".init.pt" if epoch is None else f".epoch{epoch}.pt")


def train_command(args: argparse.Namespace, command: str) -> int:
    """``autoprune train``: train a baseline from ``args`` (the parsed options) and save its state dict with a
    JSON of how it was trained (and, where asked, the weights a lottery ticket rewinds to); ``command`` is the
    command line, recorded. Returns the exit code; raises ``UserError`` for bad options."""
    if args.epochs <= 0:
        raise UserError("--epochs must be positive")
    if args.save_init_epoch is not None and not 1 <= args.save_init_epoch <= args.epochs:
        raise UserError("--save-init-epoch must be an epoch the training completes: 1 to --epochs")
    device = resolve_device(args.device)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    data = load_data(args.data, holdout=args.holdout, seed=args.seed, limit_train=args.limit_train)
    model = create_model(args.model, in_channels=data.in_channels, num_classes=data.num_classes)
    # unwrapped from torch.compile, lazy layers materialised, --init loaded, checked (autoprune.models.contract)
    model = prepare_model(model, data.example_input(), output_key=args.output_key, num_classes=data.num_classes,
                          weights=args.init)
    if not args.quiet:
        for note in contract_of(model).notes:
            console.print(note, markup=False, soft_wrap=True)
    prior_epochs: float | None = 0.0  # epochs the starting weights were trained for (None: not known)
    if args.init is not None:
        init_json = Path(args.init).with_suffix(".json")
        init_meta = json.loads(init_json.read_text()) if init_json.is_file() else {}
        prior_epochs = init_meta.get("epochs_total", init_meta.get("epochs"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rewind_points = []  # the weights saved for lottery rewinding

    def save(path: Path) -> None:
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)

    def save_rewind_point(epoch: int | None = None) -> None:
        path = rewind_weights_path(out, epoch)
        save(path)
        rewind_points.append(str(path))

    def after_epoch(epoch: int) -> None:
        if epoch == args.save_init_epoch:
            save_rewind_point(epoch)

    if args.save_init:
        save_rewind_point()
    result = train(
        model, data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        device=device, seed=args.seed, quiet=args.quiet, after_epoch=after_epoch, amp=args.amp,
    )
    test_acc = accuracy(model, data.test, device=device)
    holdout_acc = accuracy(model, data.holdout, device=device)
    save(out)
    meta = {
        "model": args.model, "data": args.data, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "seed": args.seed, "holdout": args.holdout,
        "test_acc": test_acc, "holdout_acc": holdout_acc, "seconds": round(result.seconds, 1),
        "init": args.init, "epochs_total": None if prior_epochs is None else prior_epochs + args.epochs,
        "rewind_points": rewind_points, "command": command, "layout": contract_of(model).layout,
        **({"output_key": args.output_key} if args.output_key is not None else {}),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    console.print(
        f"trained {args.model} on {args.data} for {args.epochs} epochs in {result.seconds:.0f} s: "
        f"test accuracy {test_acc:.2%}, holdout {holdout_acc:.2%} -> {out}"
    )
    return 0
