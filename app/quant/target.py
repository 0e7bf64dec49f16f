"""Quantize to a target size or bits per weight: per-tensor types chosen by measured sensitivity.

`llamascope quantize MODEL --target-size 80MiB` (or `--target-bpw 4.2`) picks, tensor group by
tensor group, between two neighbouring standard mixes, so that the file meets the target at the
lowest KL divergence this method can measure. The method:

1. **Sizes from the quantizer itself.** A dry run of llama.cpp's quantizer (nothing written) tells,
   for every tensor, the type it would really get, fallbacks included: a model whose rows do not
   divide into 256-weight blocks (the demo model's 576 columns) gets Q5_0 for "Q4_K", Q4_0 for
   "Q3_K" and so on, and only the dry run knows which tensors. Sizes are exact: rows x ggml's row
   size of that type, each tensor padded to GGUF's 32-byte alignment, plus the source's header.
   Tensor sizes add up, so the size of any mix is a sum; one dry run of each standard mix and one
   with every group lowered are all it takes.
2. **The bracket.** The standard mixes (Q2_K … Q8_0) are sorted by their dry-run size. The upper
   type H is the smallest mix larger than the target, the lower L the largest mix within it. A
   target below the smallest mix or at or above the source's size is refused with the sizes.
   A target at or above Q8_0 gives plain Q8_0.
3. **Groups.** The tensors H quantizes are grouped by kind (attn_q, attn_k, attn_v, attn_output,
   ffn_gate, ffn_up, ffn_down, and token_embd / output alone), each kind split into `layer_parts`
   consecutive layer ranges. "Dropping" a group puts its tensors in L's main tensor type through a
   tensor-type override (llama-quantize's --tensor-type: a regular expression and a type).
4. **Sensitivity, measured.** On a short evaluation text the base's log-probabilities are saved
   once; then H is quantized and its mean KL divergence from the base measured, and so is, for each
   group, H with that group alone dropped. A group's cost is its added KLD (clamped at 0: a
   negative difference is measurement noise), its gain the bytes it saves.
5. **The choice.** Which groups to drop is a 0/1 knapsack: the least total added KLD whose saved
   bytes bring H within the target (exact dynamic programme over the bytes, in units of at most
   1/4000 of what must be saved, each group's saving rounded down so the target always holds).
   Added KLDs are taken to add up, which holds while each change is small (KLD is a sum over
   positions of local divergences; the groups act on different weights). Then every dropped group
   that fits back within the target is restored, costliest first.
6. **The result** is quantized as H plus the chosen overrides; its metadata records the target,
   H, L and the overrides (`llamascope.target.*`, each value at most 127 bytes: llama.cpp's limit
   for a string override, so a long list continues in `.2`, `.3`, … keys), and its KL divergence
   is measured on the same text so that it can be set beside H's.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.common.formatting import format_bytes
from app.model.file_format import ModelFileError
from app.model.gguf_info import inspect_model
from app.quality.eval_types import EvalSettings, KLDivergenceResult, PerplexityResult
from app.quant.measuring import (
    EvalRunner,
    Stop,
    TensorPlan,
    dry_run,
    remove_quietly,
    run_eval,
    run_quantize,
)
from app.quant.plan import QuantizeRequest, QuantizeResult
from app.quant.types import quant_type, supported_quant_types
from app.quant.workflow import KLDivergenceStep, PerplexityStep

# The standard mixes a target lies between, as llama-quantize names them.
LADDER = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0")
KEY_TARGET = "llamascope.target"
KEY_TARGET_UPPER = "llamascope.target.upper_type"
KEY_TARGET_LOWER = "llamascope.target.lower_type"
KEY_TARGET_OVERRIDES = "llamascope.target.overrides"
KV_VALUE_LIMIT = 127  # llama_model_kv_override.val_str is char[128]
_UNITS = {
    "": 1, "B": 1,
    "K": 1024, "KIB": 1024, "KB": 1000,
    "M": 1024**2, "MIB": 1024**2, "MB": 1000**2,
    "G": 1024**3, "GIB": 1024**3, "GB": 1000**3,
    "T": 1024**4, "TIB": 1024**4, "TB": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")


class TargetError(Exception):
    """A target that cannot be met or understood; the message says why and what would do."""


def parse_size(text: str, what: str = "size") -> int:
    """ "80MiB", "80 MB", "1.5G", "123456" -> bytes. K/M/G/T and KiB/MiB/... are binary (1024),
    KB/MB/GB/TB decimal (1000), as the units are defined."""
    m = _SIZE.match(text or "")
    unit = m.group(2).upper() if m else ""
    if not m or unit not in _UNITS:
        raise TargetError(
            f"{what} {text!r} is not a size: give a number and a unit, such as 80MiB, 1.5GiB or 800MB "
            "(KiB/MiB/GiB are 1024-based, KB/MB/GB 1000-based, a plain number is bytes)."
        )
    value = float(m.group(1)) * _UNITS[unit]
    if value < 1:
        raise TargetError(f"{what} {text!r} must be larger than 0.")
    return int(value)


@dataclass(frozen=True)
class Target:
    """A file size in bytes, or bits per weight as llama.cpp reports them (tensor data x 8 / weights)."""

    size_bytes: int | None = None
    bits_per_weight: float | None = None

    def __post_init__(self) -> None:
        if (self.size_bytes is None) == (self.bits_per_weight is None):
            raise TargetError("Give either a target size or a target bits per weight, not both.")
        if self.bits_per_weight is not None and not (0 < self.bits_per_weight < 64):
            raise TargetError(f"A target of {self.bits_per_weight} bits per weight is not a quantization.")

    @property
    def label(self) -> str:
        if self.size_bytes is not None:
            return f"size {format_bytes(self.size_bytes)} ({self.size_bytes} bytes)"
        return f"{self.bits_per_weight:g} bits per weight"


@dataclass(frozen=True)
class TensorGroup:
    name: str  # "attn_q 0-14", "token_embd"
    pattern: str  # the override's regular expression (whole tensor names)
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class GroupSensitivity:
    name: str
    pattern: str
    saved_bytes: int  # in the target's measure (padded file bytes, or tensor bytes for bits per weight)
    kld: float  # mean KLD of H with this group alone dropped
    added_kld: float  # kld - H's KLD, clamped at 0


@dataclass(frozen=True)
class StandardSize:
    type_name: str
    file_bytes: int  # dry-run estimate of the file
    bits_per_weight: float  # tensor data x 8 / weights


@dataclass(frozen=True)
class TargetChoice:
    """What the method chose, and every figure it chose by."""

    target: Target
    limit: int  # the target in the measure compared: file bytes, or tensor bytes for bits per weight
    standards: tuple[StandardSize, ...]
    upper: str  # H
    lower: str | None  # L; None when the target is at or above Q8_0
    lowered_tensor_type: str | None  # L's main tensor type, what a dropped group becomes
    upper_kld: float | None
    groups: tuple[GroupSensitivity, ...]
    dropped: tuple[str, ...]  # group names
    overrides: tuple[tuple[str, str], ...]  # (pattern, tensor type)
    expected_file_bytes: int
    expected_bits_per_weight: float
    predicted_kld: float | None  # H's KLD plus the dropped groups' added KLD

    def metadata(self) -> dict[str, str]:
        """The choice as string keys for the file's metadata, each value within llama.cpp's limit."""
        out = {KEY_TARGET: self.target.label[:KV_VALUE_LIMIT], KEY_TARGET_UPPER: self.upper}
        if self.lower:
            out[KEY_TARGET_LOWER] = self.lower
        if self.dropped and self.lowered_tensor_type:
            text = f"{self.lowered_tensor_type}: " + ", ".join(self.dropped)
            parts = [text[i : i + KV_VALUE_LIMIT] for i in range(0, len(text), KV_VALUE_LIMIT)]
            for i, part in enumerate(parts):
                out[KEY_TARGET_OVERRIDES if i == 0 else f"{KEY_TARGET_OVERRIDES}.{i + 1}"] = part
        return out


@dataclass(frozen=True)
class TargetResult:
    choice: TargetChoice
    quantized: QuantizeResult
    kld: KLDivergenceResult | None  # the result's, on the same text as the sensitivities
    base: PerplexityResult | None  # the base's run that saved its log-probabilities

    @property
    def met(self) -> bool:
        t = self.choice.target
        if t.size_bytes is not None:
            return self.quantized.output_bytes <= t.size_bytes
        return t.bits_per_weight is not None and self.quantized.bits_per_weight <= t.bits_per_weight + 0.005


@dataclass(frozen=True)
class TargetProgress:
    phase: str  # "sizes", "base", "sensitivity", "quantize", "measure"
    done: int
    total: int
    text: str


@dataclass(frozen=True)
class TargetRequest:
    source: str
    target: Target
    text_source: str  # evaluation text for the sensitivities ("default" or a file)
    settings: EvalSettings = EvalSettings(n_ctx=256, n_chunks=4)
    output: str | None = None
    base: str | None = None  # KL divergence reference; None: the source
    imatrix: str | None = None
    layer_parts: int = 2
    # Only tensors of these kinds ("attn_q", "ffn_up", "token_embd", ...) may be lowered; None: all.
    # Fewer kinds measure faster and leave the others at the upper type.
    kinds: tuple[str, ...] | None = None
    n_threads: int | None = None
    overwrite: bool = False
    allow_requantize: bool = False
    measure_result: bool = True


def tensor_groups(
    tensors: tuple[TensorPlan, ...], layer_parts: int, kinds: tuple[str, ...] | None = None
) -> tuple[TensorGroup, ...]:
    """Quantized tensors by kind and by `layer_parts` consecutive layer ranges; others one by one;
    only the `kinds` given (None: every kind)."""
    by_kind: dict[str, dict[int, str]] = {}
    single: list[str] = []
    for t in tensors:
        if t.type_name in ("F32", "F16", "BF16", "F64", "I32"):
            continue
        m = _BLOCK.match(t.name)
        kind = m.group(2) if m else t.name.removesuffix(".weight")
        if kinds is not None and kind not in kinds:
            continue
        if m:
            by_kind.setdefault(m.group(2), {})[int(m.group(1))] = t.name
        else:
            single.append(t.name)
    groups: list[TensorGroup] = []
    for kind, layers in by_kind.items():
        ids = sorted(layers)
        parts = max(1, min(layer_parts, len(ids)))
        for p in range(parts):
            chunk = ids[p * len(ids) // parts : (p + 1) * len(ids) // parts]
            if not chunk:
                continue
            alternation = "|".join(str(i) for i in chunk)
            name = kind if parts == 1 else f"{kind} {chunk[0]}-{chunk[-1]}"
            pattern = rf"^blk\.({alternation})\.{re.escape(kind)}\.weight$"
            groups.append(TensorGroup(name, pattern, tuple(layers[i] for i in chunk)))
    for name in single:
        groups.append(TensorGroup(name.removesuffix(".weight"), rf"^{re.escape(name)}$", (name,)))
    return tuple(groups)


def choose_groups(
    groups: tuple[GroupSensitivity, ...], need: int, limit_slack: Callable[[tuple[str, ...]], int]
) -> tuple[str, ...]:
    """The groups to drop: least total added KLD saving at least `need` bytes (see the module
    docstring, step 5); then each dropped group whose restoring keeps `limit_slack(dropped) >= 0`
    is restored, costliest first. Raises TargetError when all of them together do not save enough."""
    if need <= 0:
        return ()
    if sum(g.saved_bytes for g in groups) < need:
        raise TargetError("Dropping every tensor group does not save enough.")
    unit = max(1, need // 4000)
    cap = -(-need // unit)
    inf = math.inf
    # best[c]: least cost (added KLD, then a hair per saved byte) reaching at least c units; with the set.
    best: list[float] = [0.0] + [inf] * cap
    chosen: list[int] = [0] * (cap + 1)
    for i, g in enumerate(groups):
        w = g.saved_bytes // unit
        if w <= 0:
            continue
        cost = max(g.added_kld, 0.0) + 1e-15 * g.saved_bytes
        for c in range(cap, -1, -1):
            prev = max(0, c - w)
            if best[prev] + cost < best[c] and not (chosen[prev] >> i) & 1:
                best[c] = best[prev] + cost
                chosen[c] = chosen[prev] | (1 << i)
    if best[cap] == inf:  # rounding down each saving can lose a few units: take them all
        mask = (1 << len(groups)) - 1
    else:
        mask = chosen[cap]
    dropped = [g for i, g in enumerate(groups) if (mask >> i) & 1]
    for g in sorted(dropped, key=lambda g: g.added_kld, reverse=True):
        trial = tuple(d.name for d in dropped if d is not g)
        if limit_slack(trial) >= 0:
            dropped.remove(g)
    return tuple(d.name for d in dropped)


class TargetQuantizer:
    """One target-size quantization: `run()` blocks (call it off the GUI thread), `stop.set()`
    from any thread ends it; the work folder (temporary files) is removed either way."""

    def __init__(
        self,
        request: TargetRequest,
        runner: EvalRunner,
        *,
        stop: Stop | None = None,
        on_progress: Callable[[TargetProgress], None] | None = None,
        on_eval_progress: Callable[[Any], None] | None = None,
        work_folder: str | None = None,
    ) -> None:
        self.request = request
        self.runner = runner
        self.stop = stop or Stop()
        self._on_progress = on_progress
        self._on_eval_progress = on_eval_progress
        self._work_parent = work_folder

    def _progress(self, phase: str, done: int, total: int, text: str) -> None:
        if self._on_progress is not None:
            self._on_progress(TargetProgress(phase, done, total, text))

    def _request(
        self, type_name: str, output: str, overrides: tuple[tuple[str, str], ...] = (), **kw: Any
    ) -> QuantizeRequest:
        r = self.request
        return QuantizeRequest(
            source=r.source,
            type_name=type_name,
            output=output,
            allow_requantize=r.allow_requantize,
            n_threads=r.n_threads,
            imatrix=r.imatrix,
            tensor_types=overrides,
            **kw,
        )

    def run(self) -> TargetResult:
        r = self.request
        try:
            info = inspect_model(r.source)
        except ModelFileError as exc:
            raise TargetError(str(exc)) from None
        if r.layer_parts < 1:
            raise TargetError(f"layer parts must be 1 or more, not {r.layer_parts}.")
        header = _header_bytes(r.source)
        extra_kv = 512  # the target's own metadata keys, generously
        t = r.target
        if t.size_bytes is not None:
            if t.size_bytes >= info.file_size_bytes:
                raise TargetError(
                    f"The target {format_bytes(t.size_bytes)} is not below the source's size "
                    f"({format_bytes(info.file_size_bytes)}): nothing to quantize. Use the source as it is."
                )
            limit = t.size_bytes - header - extra_kv

            def measure(ts: tuple[TensorPlan, ...]) -> int:
                return sum(x.padded_bytes for x in ts)
        else:
            assert t.bits_per_weight is not None
            if t.bits_per_weight >= info.bits_per_weight:
                raise TargetError(
                    f"The target {t.bits_per_weight:g} bits per weight is not below the source's "
                    f"({info.bits_per_weight:.2f}): nothing to quantize."
                )
            limit = int(t.bits_per_weight * info.n_params / 8)

            def measure(ts: tuple[TensorPlan, ...]) -> int:
                return sum(x.n_bytes for x in ts)

        def file_bytes(ts: tuple[TensorPlan, ...]) -> int:
            return header + extra_kv + sum(x.padded_bytes for x in ts)

        def bpw(ts: tuple[TensorPlan, ...]) -> float:
            return sum(x.n_bytes for x in ts) * 8 / info.n_params if info.n_params else 0.0

        supported = {q.name for q in supported_quant_types()}
        ladder = [n for n in LADDER if n in supported and (r.imatrix or not quant_type(n).needs_imatrix)]
        work = tempfile.mkdtemp(prefix="llamascope-target-", dir=self._work_parent or _work_parent(r))
        try:
            plans: dict[str, tuple[TensorPlan, ...]] = {}
            for i, name in enumerate(ladder):
                self._progress("sizes", i, len(ladder), f"dry run of {name}")
                plans[name] = dry_run(self._request(name, os.path.join(work, f"dry.{name}.gguf")), self.stop)
            order = sorted(ladder, key=lambda n: measure(plans[n]))
            standards = tuple(StandardSize(n, file_bytes(plans[n]), bpw(plans[n])) for n in order)
            smallest = order[0]
            if measure(plans[smallest]) > limit:
                raise TargetError(
                    f"The target {t.label} is below the smallest mix this method reaches: {smallest} "
                    f"makes {format_bytes(file_bytes(plans[smallest]))} ({bpw(plans[smallest]):.2f} bits per "
                    "weight). Choose a larger target, or an i-quant with an importance matrix."
                )
            fits = [n for n in order if measure(plans[n]) <= limit]
            above = [n for n in order if measure(plans[n]) > limit]
            if not above:  # at or above the largest mix: that mix is the answer
                upper, lower = order[-1], None
            else:
                upper, lower = above[0], fits[-1]
            if lower is None:
                choice = TargetChoice(
                    t, limit, standards, upper, None, None, None, (), (), (), file_bytes(plans[upper]),
                    bpw(plans[upper]), None,
                )  # fmt: skip
                return self._finish(choice, None, work)
            lowered = quant_type(lower).main_tensor_type
            groups = tensor_groups(plans[upper], r.layer_parts, r.kinds)
            all_low = tuple((g.pattern, lowered) for g in groups)
            self._progress("sizes", len(ladder), len(ladder), "dry run with every group lowered")
            low_plan = {
                x.name: x
                for x in dry_run(self._request(upper, os.path.join(work, "dry.low.gguf"), all_low), self.stop)
            }
            high_plan = {x.name: x for x in plans[upper]}

            def saved(names: tuple[str, ...]) -> int:
                return measure(tuple(high_plan[n] for n in names)) - measure(
                    tuple(low_plan[n] for n in names)
                )

            useful = [g for g in groups if saved(g.tensors) > 0]
            # -- the base's log-probabilities, then H's KLD and each group's
            base_path = r.base or r.source
            self._progress("base", 0, 1, f"log-probabilities of {os.path.basename(base_path)}")
            base = run_eval(
                self.runner,
                PerplexityStep(
                    base_path, r.text_source, r.settings, save_logits=os.path.join(work, "base.kld")
                ),
                self.stop,
                self._on_eval_progress,
            )
            logits = base.logits_file
            total = len(useful) + 1
            self._progress("sensitivity", 0, total, f"{upper} as it is")
            upper_kld = self._kld_of(self._request(upper, os.path.join(work, "upper.gguf")), logits)
            measured: list[GroupSensitivity] = []
            for i, g in enumerate(useful, 1):
                self._progress("sensitivity", i, total, f"{upper} with {g.name} in {lowered}")
                k = self._kld_of(
                    self._request(upper, os.path.join(work, f"g{i}.gguf"), ((g.pattern, lowered),)), logits
                )
                measured.append(
                    GroupSensitivity(g.name, g.pattern, saved(g.tensors), k, max(0.0, k - upper_kld))
                )
            by_name = {g.name: g for g in groups}
            need = measure(plans[upper]) - limit

            def slack(dropped: tuple[str, ...]) -> int:
                names = {n for d in dropped for n in by_name[d].tensors}
                ts = tuple(low_plan[n] if n in names else x for n, x in high_plan.items())
                return limit - measure(ts)

            try:
                dropped = choose_groups(tuple(measured), need, slack)
            except TargetError:
                saving = sum(g.saved_bytes for g in measured)
                raise TargetError(
                    f"{upper} with every allowed tensor group in {lowered} saves {format_bytes(saving)}, and "
                    f"the target needs {format_bytes(need)} less than {upper}. Allow more tensor kinds, or "
                    f"choose {lower}."
                ) from None
            chosen = {n for d in dropped for n in by_name[d].tensors}
            final = tuple(low_plan[n] if n in chosen else x for n, x in high_plan.items())
            sens = {g.name: g for g in measured}
            choice = TargetChoice(
                target=t,
                limit=limit,
                standards=standards,
                upper=upper,
                lower=lower,
                lowered_tensor_type=lowered,
                upper_kld=upper_kld,
                groups=tuple(measured),
                dropped=dropped,
                overrides=tuple((by_name[d].pattern, lowered) for d in dropped),
                expected_file_bytes=file_bytes(final),
                expected_bits_per_weight=bpw(final),
                predicted_kld=upper_kld + sum(sens[d].added_kld for d in dropped),
            )
            return self._finish(choice, base, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _kld_of(self, request: QuantizeRequest, logits: str | None) -> float:
        assert logits is not None
        made = run_quantize(request, self.stop)
        try:
            result: KLDivergenceResult = run_eval(
                self.runner,
                KLDivergenceStep(made.output_path, logits, self.request.settings),
                self.stop,
                self._on_eval_progress,
            )
            return result.kld_mean
        finally:
            remove_quietly(made.output_path)

    def _finish(self, choice: TargetChoice, base: PerplexityResult | None, work: str) -> TargetResult:
        r = self.request
        self._progress("quantize", 0, 1, f"{choice.upper} with {len(choice.overrides)} override(s)")
        output = r.output or _default_output(r.source, choice)
        metadata = tuple(choice.metadata().items())
        request = self._request(
            choice.upper, output, choice.overrides, overwrite=r.overwrite, metadata=metadata
        )
        made = run_quantize(request, self.stop)
        kld = None
        if r.measure_result and base is not None and base.logits_file:
            self._progress("measure", 0, 1, f"KL divergence of {os.path.basename(made.output_path)}")
            kld = run_eval(
                self.runner,
                KLDivergenceStep(made.output_path, base.logits_file, r.settings),
                self.stop,
                self._on_eval_progress,
            )
        return TargetResult(choice, made, kld, base)


def _default_output(source: str, choice: TargetChoice) -> str:
    from app.quant.plan import default_output_path

    path = default_output_path(source, choice.upper)
    stem = path[: -len(f".{choice.upper}.gguf")] if path.endswith(f".{choice.upper}.gguf") else path[:-5]
    t = choice.target
    tag = f"{t.size_bytes // (1024 * 1024)}MiB" if t.size_bytes is not None else f"{t.bits_per_weight:g}bpw"
    return f"{stem}.{choice.upper}-target-{tag}.gguf"


def _work_parent(r: TargetRequest) -> str | None:
    """The temporary files go beside the output (same disk as the result), or the system's temp folder."""
    if r.output:
        folder = os.path.dirname(os.path.abspath(r.output))
        if os.path.isdir(folder) and os.access(folder, os.W_OK):
            return folder
    return None


def _header_bytes(path: str) -> int:
    """Where the source's tensor data begins: its header, metadata and tensor index, aligned."""
    import gguf

    try:
        return int(gguf.GGUFReader(path, "r").data_offset)
    except (OSError, ValueError) as exc:
        raise TargetError(f"Cannot read {path} as GGUF: {exc}") from None


__all__ = [
    "LADDER",
    "GroupSensitivity",
    "StandardSize",
    "Target",
    "TargetChoice",
    "TargetError",
    "TargetProgress",
    "TargetQuantizer",
    "TargetRequest",
    "TargetResult",
    "choose_groups",
    "parse_size",
    "tensor_groups",
]
