"""``bnorder audit``: where noise (dropout and its kin) feeds BatchNorm in any PyTorch model.

Li et al. (CVPR 2019): a noise layer anywhere upstream of a BN layer, through convolutions too,
shifts the variance that BN learns in training away from what it sees in eval mode. The audit
traces the model's data flow (``torch.fx`` where it traces; else the order in which modules run
in one forward pass, which it says), lists for every BN layer the noise layers that reach it
with no other BN in between, and, given input batches, measures each BN layer's variance shift
(measure.py, as the benchmark does) and what re-calibration does to it.

Models come from ``torchvision:NAME``, ``path/to/file.py:factory`` or ``package.module:factory``
(``load_model``). Nothing here prints: the CLI renders ``Audit``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from bnorder.core.errors import BnorderError
from bnorder.shift.kinds import (
    NOISE_FUNCTIONS,
    function_kind,
    is_bn,
    noise_kind,
    noise_rate,
    other_norms,
)
from bnorder.shift.measure import recalibrate_bn, variance_shift


class ModelError(BnorderError, ValueError):
    """A model that cannot be imported or built, or weights that do not fit it."""


# ---------------------------------------------------------------- findings


@dataclass(frozen=True)
class Feed:
    """A noise layer upstream of a BN layer, ``hops`` operations away."""

    name: str
    kind: str
    rate: float | None
    hops: int


@dataclass
class BNLayer:
    """One BN layer: the noise that reaches it, and where measured its variance shift and
    the two variances (channel means) it is the ratio of."""

    name: str
    kind: str
    fed_by: list[Feed] = field(default_factory=list)
    shift: float | None = None
    shift_recalibrated: float | None = None
    running_var: float | None = None  # what BN learnt in training
    real_var: float | None = None  # what it sees in eval mode

    def measured(self, row: dict[str, Any]) -> None:
        """Take the figures of this layer's row of ``variance_shift``."""
        self.shift = row["shift"]
        self.running_var, self.real_var = row["running_var"], row["real_var"]


# Variance ratios within this factor of each other are not told apart (augmentation, padding
# and short training shift clean layers by 1.3 to 1.5, docs/variance-shift.md): a noise-fed
# layer's shift is noise's only past MARGIN × the largest clean layer's; a layer is shifted
# past MARGIN (× 1, no shift), and re-calibration brings it near 1 at MARGIN or less.
MARGIN = 1.1
# re-calibration helps where test accuracy gains this much (1 point), or costs it
GAIN = 0.01


def clearly_above(shift: float, reference: float) -> bool:
    """The one rule: ``shift`` exceeds ``reference`` by more than MARGIN."""
    return shift > MARGIN * reference


@dataclass(frozen=True)
class Findings:
    """What the measured shifts say, by ``clearly_above``: which noise-fed layers noise
    shifts past the clean layers' largest (or past 1, where no clean layer was measured),
    which shift no more than that, which clean layers shift too, and whether re-calibration
    helps, noise or not."""

    clean_reference: float | None  # the largest finite shift of a layer no noise feeds
    clean_reference_layer: str | None
    noise_shifted: list[str]  # noise-fed layers clearly past the reference: noise's doing
    like_clean: list[str]  # noise-fed layers within it: not noise's
    clean_shifted: list[str]  # clean layers clearly past 1: not noise's either
    recalibration_gain: float | None  # test accuracy after − before, where both measured
    recalibration_helps: bool | None  # None where not re-calibrated


def assess(audit: Audit) -> Findings | None:
    """The findings of ``audit``'s measured shifts; None where none was measured."""
    measured = [layer for layer in audit.layers if _known(layer.shift)]
    if not measured:
        return None
    clean = [layer for layer in measured if not layer.fed_by]
    finite = [layer for layer in clean if math.isfinite(layer.shift)]  # a dead channel is inf
    top = max(finite, key=lambda layer: layer.shift) if finite else None
    reference = top.shift if top is not None else 1.0
    fed = [layer for layer in measured if layer.fed_by]
    gain = None
    if audit.accuracy is not None and audit.accuracy_recalibrated is not None:
        gain = audit.accuracy_recalibrated - audit.accuracy
    return Findings(
        clean_reference=top.shift if top is not None else None,
        clean_reference_layer=top.name if top is not None else None,
        noise_shifted=[x.name for x in fed if clearly_above(x.shift, reference)],
        like_clean=[x.name for x in fed if not clearly_above(x.shift, reference)],
        clean_shifted=[x.name for x in clean if clearly_above(x.shift, 1.0)],
        recalibration_gain=gain,
        recalibration_helps=_helps(measured, gain),
    )


def _known(shift: float | None) -> bool:
    return shift is not None and not math.isnan(shift)


def _helps(measured: list[BNLayer], gain: float | None) -> bool | None:
    """Whether re-calibration helps: by the accuracy it gains where measured, else by
    bringing a clearly shifted layer near 1 with every layer near 1 after."""
    after = [layer.shift_recalibrated for layer in measured]
    if not any(_known(shift) for shift in after):
        return None
    if gain is not None:
        return gain >= GAIN
    shifted = any(clearly_above(layer.shift, 1.0) for layer in measured)
    return shifted and not any(_known(s) and clearly_above(s, 1.0) for s in after)


@dataclass
class Audit:
    """What the audit found: per BN layer in order, the noise that reaches no BN at all
    (after the last BN: harmless to BN), how the data flow was found, and, where measured,
    on what."""

    layers: list[BNLayer]
    noise_after_last_bn: list[str]
    method: str  # "torch.fx" or "execution order (…why fx did not trace…)"
    measured_on: str | None = None  # "N random inputs of shape …" or the data's description
    accuracy: float | None = None  # on the labelled batches given, where given
    accuracy_recalibrated: float | None = None  # the same after re-calibration
    recalibration: str | None = None  # the mode BN was re-estimated in, where it was
    subject: str | None = None  # what was audited, where more than a model (a run's folder)
    norm_layers: dict[str, int] = field(default_factory=dict)  # other norms: class → count
    notes: list[str] = field(default_factory=list)  # what the figures do not say, in words
    # the copy re-calibration made (the model itself is left as it was), to keep or save
    recalibrated_model: nn.Module | None = field(default=None, repr=False, compare=False)

    def measured(self, rows: list[dict[str, Any]]) -> None:
        """Each layer's figures from ``variance_shift``'s rows (matched by name)."""
        by_name = {row["name"]: row for row in rows}
        for layer in self.layers:
            if layer.name in by_name:
                layer.measured(by_name[layer.name])

    def recalibrated(self, rows: list[dict[str, Any]]) -> None:
        """Each layer's shift after re-calibration, from ``variance_shift``'s rows."""
        by_name = {row["name"]: row["shift"] for row in rows}
        for layer in self.layers:
            layer.shift_recalibrated = by_name.get(layer.name)

    @property
    def findings(self) -> Findings | None:
        """What the shifts say (``assess``), from the figures as they are now."""
        return assess(self)

    @property
    def exposed(self) -> list[BNLayer]:
        return [layer for layer in self.layers if layer.fed_by]

    def summary(self) -> str:
        """One line: how many BN layers noise feeds, and the noise past the last BN."""
        if not self.layers:
            norms = ", ".join(f"{name} ×{n}" for name, n in self.norm_layers.items())
            return "no BN layer, so no variance shift" + (
                f" (norm layers: {norms})" if norms else ""
            )
        exposed, total = len(self.exposed), len(self.layers)
        if total == 1:
            line = f"the one BN layer is {'' if exposed else 'not '}fed by noise"
        else:
            line = f"{exposed} of {total} BN layers {'is' if exposed == 1 else 'are'} fed by noise"
        if self.noise_after_last_bn:
            line += f"; noise after the last BN: {', '.join(self.noise_after_last_bn)}"
        return line


# ---------------------------------------------------------------- data flow


class _NoiseTracer(fx.Tracer):
    """fx's tracer, keeping noise and BN layers whole: fx calls into any module not from
    torch.nn (torchvision's StochasticDepth, timm's DropPath and BatchNormAct2d, bnorder's
    own), where they would vanish into functions."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        whole = noise_kind(module) is not None or is_bn(module)
        return whole or super().is_leaf_module(module, qualified_name)


def _feeds_by_fx(model: nn.Module) -> tuple[dict[str, list[Feed]], list[str]]:
    """Per BN layer, the noise upstream of it with no BN between, from the fx graph; and the
    noise upstream of no BN. Raises whatever fx raises where the model does not trace."""
    graph = _NoiseTracer().trace(model)
    modules = dict(model.named_modules())

    def noise_of(node: fx.Node) -> tuple[str, str, float | None] | None:
        if node.op == "call_module":
            kind = noise_kind(modules[node.target])
            return (node.target, kind, noise_rate(modules[node.target])) if kind else None
        if node.op != "call_function" or node.target not in NOISE_FUNCTIONS:
            return None
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        kind = function_kind(node.target, p)
        if kind is None:  # called at rate 0
            return None
        caller = list(node.meta.get("nn_module_stack", {}))  # the module that calls it
        name = f"{caller[-1]}.{node.name}" if caller else node.name
        return name, kind, p if isinstance(p, float) else None

    feeds: dict[str, list[Feed]] = {}
    reaching_bn: set[str] = set()
    for node in graph.nodes:
        if node.op == "call_module" and is_bn(modules[node.target]):
            feeds[node.target] = _upstream(node, modules, noise_of)
            reaching_bn |= {feed.name for feed in feeds[node.target]}
    found = [noise_of(node) for node in graph.nodes]
    after = [n[0] for n in found if n is not None and n[0] not in reaching_bn]
    return feeds, after


def _upstream(
    bn: fx.Node, modules: dict[str, nn.Module], noise_of: Callable[[fx.Node], Any]
) -> list[Feed]:
    """The noise nodes reached walking back from ``bn`` through every input (sums and
    concatenations too), stopping at other BN layers: breadth first, the nearest hop count."""
    seen, feeds, frontier, hops = {bn}, {}, list(bn.all_input_nodes), 1
    while frontier:
        following = []
        for node in frontier:
            if node in seen:
                continue
            seen.add(node)
            if node.op == "call_module" and is_bn(modules[node.target]):
                continue  # that BN normalises what came before it
            noise = noise_of(node)
            if noise is not None and noise[0] not in feeds:
                feeds[noise[0]] = Feed(noise[0], noise[1], noise[2], hops)
            following += node.all_input_nodes
        frontier, hops = following, hops + 1
    return list(feeds.values())


def _feeds_by_order(
    model: nn.Module, example: torch.Tensor
) -> tuple[dict[str, list[Feed]], list[str]]:
    """Where fx does not trace: leaf modules in the order one forward pass runs them; a BN is
    fed by the noise that ran since the BN before it (branches are not told apart)."""
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda m, i, name=name: order.append(name))
        for name, module in model.named_modules()
        if not list(module.children())
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)  # the caller's model, as it was
    modules = dict(model.named_modules())
    feeds: dict[str, list[Feed]] = {}
    pending: list[tuple[str, int]] = []  # noise since the last BN, with its position
    for position, name in enumerate(order):
        module = modules[name]
        if is_bn(module):
            feeds[name] = [
                Feed(n, noise_kind(modules[n]) or "", noise_rate(modules[n]), position - at)
                for n, at in pending
            ]
            pending = []
        elif noise_kind(module):
            pending.append((name, position))
    return feeds, [name for name, _ in pending]


# ---------------------------------------------------------------- the audit


def audit(
    model: nn.Module,
    batches: Iterable[torch.Tensor] | None = None,
    *,
    example: torch.Tensor | None = None,
    recalibrate: bool = False,
    measured_on: str | None = None,
    labelled: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Audit:
    """Which BN layers of ``model`` noise feeds and, given ``batches`` (input tensors or
    (input, target) pairs, re-iterable, on the model's device), the variance shift of every BN
    layer; with ``recalibrate``, also after re-estimating BN with noise off (on a copy: the
    model is left as it is). ``labelled``: (input, target) batches to measure accuracy on,
    before and after. ``example``: one input batch, for the execution-order fallback where fx
    does not trace (default: the first of ``batches``)."""
    if not isinstance(model, nn.Module):  # fx would say something about FunctionType
        raise ModelError(f"audit: a {type(model).__name__}, not a torch.nn.Module")
    batches = _inputs(batches) if batches is not None else None
    try:
        feeds, after = _feeds_by_fx(model)
        method = "torch.fx"
    except Exception as err:  # fx raises many kinds on dynamic control flow
        if example is None and batches is None:
            raise ModelError(
                f"fx cannot trace the model ({err}); give an example input to run it on "
                "(audit's example=; on the command line --input-shape or --data)"
            ) from None
        first = example if example is not None else next(iter(batches))
        feeds, after = _feeds_by_order(model, first)
        method = f"execution order (torch.fx could not trace: {type(err).__name__})"
    names = dict((name, m) for name, m in model.named_modules())
    layers = [BNLayer(name, type(names[name]).__name__, fed) for name, fed in feeds.items()]
    result = Audit(layers, after, method, measured_on, norm_layers=other_norms(model))
    if batches is not None:
        recalibrated = result.recalibrated_model = _measure(model, batches, result, recalibrate)
        if labelled is not None:
            result.accuracy = _accuracy(model, labelled)
            if recalibrated is not None:
                result.accuracy_recalibrated = _accuracy(recalibrated, labelled)
    return result


@torch.no_grad()
def _accuracy(model: nn.Module, labelled: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training, correct, seen = model.training, 0, 0
    model.eval()
    for images, labels in labelled:
        correct += int((model(images).argmax(1) == labels).sum())
        seen += len(labels)
    model.train(was_training)
    return correct / seen


class _Inputs:
    """Input tensors of batches that may be (input, target) pairs; re-iterable."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self):
        for batch in self.batches:
            yield batch[0] if isinstance(batch, tuple | list) else batch


def _inputs(batches: Iterable[Any]) -> _Inputs:
    return batches if isinstance(batches, _Inputs) else _Inputs(batches)


def _measure(
    model: nn.Module, batches: _Inputs, result: Audit, recalibrate: bool
) -> nn.Module | None:
    """Each layer's shift, and after re-calibrating a copy where asked; returns the copy."""
    rows = variance_shift(model, batches)
    result.measured(rows)
    if not (recalibrate and rows):
        return None
    copied = copy.deepcopy(model)
    recalibrate_bn(copied, batches)
    result.recalibration = "sequential"  # recalibrate_bn's default
    result.recalibrated(variance_shift(copied, batches))
    return copied


def random_batches(shape: tuple[int, ...], count: int, batch_size: int = 32) -> list[torch.Tensor]:
    """``count`` standard-normal inputs of ``shape`` in batches, from a fixed generator: for a
    model without data at hand (real data should be preferred: say so)."""
    generator = torch.Generator().manual_seed(0)
    sizes = [batch_size] * (count // batch_size) + (
        [count % batch_size] if count % batch_size else []
    )
    return [torch.randn(n, *shape, generator=generator) for n in sizes]


def layer_shifts(model: nn.Module, batches: Iterable[Any]) -> list[dict[str, Any]]:
    """``bnorder.variance_shift``: per BN layer of any model, its index, name, running and
    real variance and shift, on ``batches`` (input tensors or (input, target) pairs on the
    model's device, iterated once). The model is left in the mode it was in."""
    return variance_shift(model, _inputs(batches))


def recalibrated(model: nn.Module, batches: Iterable[Any], mode: str = "sequential") -> nn.Module:
    """``bnorder.recalibrate_bn``: re-estimate every BN layer's statistics of ``model`` with
    noise off, in place, from ``batches`` (tensors or pairs, re-iterable); returns the model."""
    recalibrate_bn(model, _inputs(batches), mode=mode)
    return model
