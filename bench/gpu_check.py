"""The GPU figures, in one run of a few minutes (bench/gpu_check.sh runs it after the CUDA tests).

    python3 bench/gpu_check.py [--device cuda] [--new-tokens 64] [--tiny]

Random weights everywhere (speed and memory do not depend on what the weights say), built on
the device, nothing downloaded:

1. fp16 against 4-bit tokens/s of a 7B-shaped (Vicuna-7B) and a 13B-shaped (Vicuna-13B)
   Llama: prefill of a 256-token prompt, then greedy decoding; decode tokens/s =
   (N-1) / (time for N new tokens - time for 1).
2. The paper's 13B OmniPath shapes (`omnipath_13b_config()`: Vicuna-13B, SigLIP SO400M, UNI
   ViT-L) through the engine on a synthetic slide, fp16 then 4-bit (the LLM decoder's Linear
   layers NF4 with double quantization; towers, projector, mask modules and LM head 16-bit):
   GPU memory allocated once built, and the peak during one PGDFC answer (goal: 4-bit
   ≤ 10 GB); PGDFC (S = 8) latency over thumbnail-only, median of 3 follow-up answers each
   (thumbnail cached, detail cache emptied; goal ≤ 1.3×).

4-bit replaces each Linear in place (bitsandbytes' Linear4bit, the layers transformers'
BitsAndBytesConfig puts there): the same kernels as `load_model(..., quantization="4bit")`
without a 26 GB checkpoint on disk. Without bitsandbytes the 4-bit columns say so.
`--tiny`: the same steps on tiny shapes, for a dry run on a CPU (the test suite runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from llava_memory import LLMS  # noqa: E402  (bench/ is this script's folder)
from torch import nn  # noqa: E402

GB = 1e9
GOAL_4BIT_PEAK_GB = 10.0
GOAL_PGDFC_VS_THUMB = 1.3
PROMPT_TOKENS = 256
QUESTION = "Which region of this slide is the most atypical, and what grade is the lesion?"
# Vicuna-7B / -13B (what LLaVA-1.5 and Quilt-LLaVA are built on), as bench/llava_memory.py
# prices them; tiny ones for the dry run.
LLM_SHAPES = {"7B": LLMS["vicuna-7b"], "13B": LLMS["vicuna-13b"]}
TINY_LLM_SHAPES = {
    "tiny-a": dict(model_type="llama", hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "tiny-b": dict(model_type="llama", hidden_size=128, intermediate_size=256,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
}  # fmt: skip


# --- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in `dtype` (no float32 copy of 13B weights first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def allocated_gb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None


def gb(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f} GB"


def bitsandbytes_missing() -> str | None:
    """Why 4-bit cannot run here, or None."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # ImportError, or a broken native library
        return f"bitsandbytes is not importable ({type(error).__name__}: {error})"
    return None


def quantize_4bit(decoder: nn.Module, compute_dtype: torch.dtype) -> int:
    """Replace every nn.Linear under `decoder` by an NF4 Linear4bit (double quantization), on
    the Linear's own device; returns how many. The LM head is not under the decoder."""
    import bitsandbytes as bnb

    count = 0
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            device = child.weight.device
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                quant_type="nf4",
                compress_statistics=True,
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
            )
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            layer = layer.to(device)
            if layer.weight.dtype != torch.uint8:
                raise RuntimeError(f"{name} was not quantized (weight dtype {layer.weight.dtype})")
            setattr(parent, name, layer)
            count += 1
    return count


# --- 1. tokens/s ---------------------------------------------------------------------------


def decode_rate(model: nn.Module, device: torch.device, new_tokens: int) -> float:
    """Greedy decode tokens/s after a PROMPT_TOKENS prefill (EOS never stops it)."""
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(device)
    model.generation_config.eos_token_id = None

    def timed(n: int) -> float:
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
        sync(device)
        assert out.shape[1] == PROMPT_TOKENS + n
        return time.perf_counter() - started

    timed(4)  # warm-up: kernels, allocator
    first = statistics.median(timed(1) for _ in range(3))
    whole = statistics.median(timed(new_tokens) for _ in range(2))
    return (new_tokens - 1) / max(whole - first, 1e-9)


def llm_speeds(shapes: dict, device: torch.device, dtype: torch.dtype, new_tokens: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    missing = bitsandbytes_missing()
    print(f"\n== 1. fp16 vs 4-bit decoding, random-weight Llama, {PROMPT_TOKENS}-token prompt, "
          f"{new_tokens} new tokens, batch 1, {dtype} compute")  # fmt: skip
    print(
        "| shape | params | 16-bit tok/s | 16-bit memory | 4-bit tok/s | 4-bit memory | 4-bit/16-bit |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, shape in shapes.items():
        shape = dict(shape)
        config = AutoConfig.for_model(shape.pop("model_type"), vocab_size=32000, **shape)
        free(device)
        with default_dtype(dtype), torch.device(device):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e9
        fp16_rate, fp16_memory = decode_rate(model, device, new_tokens), allocated_gb(device)
        if missing is None:
            quantize_4bit(model.model, dtype)
            free(device)
            q_rate, q_memory = decode_rate(model, device, new_tokens), allocated_gb(device)
            four = f"{q_rate:.1f} | {gb(q_memory)} | {q_rate / fp16_rate:.2f}x"
        else:
            four = "skipped | skipped | -"
        print(f"| {name} | {params:.2f} B | {fp16_rate:.1f} | {gb(fp16_memory)} | {four} |",
              flush=True)  # fmt: skip
        del model
    if missing is not None:
        print(f"4-bit skipped: {missing}.")
    free(device)


# --- 2. the paper's 13B OmniPath shapes through the engine --------------------------------------


def write_slide(path: Path, width: int, height: int) -> Path:
    """An H&E-like PNG: pink tissue with purple nuclei on the left two thirds, glass right."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = np.full((height, width, 3), 245, dtype=np.uint8)
    tissue_right = width * 2 // 3
    pixels[:, :tissue_right] = (225, 140, 185)
    count = width * height // 400
    ys, xs = rng.integers(0, height - 4, count), rng.integers(0, tissue_right - 4, count)
    for dy in range(4):
        for dx in range(4):
            pixels[ys + dy, xs + dx] = (110, 50, 140)
    Image.fromarray(pixels).save(path)
    return path


def omnipath_section(
    build: Callable[[], nn.Module],
    slide_path: Path,
    device: torch.device,
    dtype: torch.dtype,
    new_tokens: int,
) -> None:
    from omnipath.engine import AnswerOptions, Engine
    from omnipath.model import build_tiny_tokenizer
    from omnipath.slide import open_slide

    missing = bitsandbytes_missing()
    print(f"\n== 2. the paper's OmniPath shapes through the engine ({dtype} compute, "
          f"{new_tokens} new tokens per answer, S = 8)")  # fmt: skip
    free(device)
    with default_dtype(dtype), torch.device(device):
        torch.manual_seed(0)
        model = build().eval()
    params = sum(p.numel() for p in model.parameters()) / 1e9
    llm = sum(p.numel() for p in model.language_model.parameters()) / 1e9
    print(f"{params:.2f} B parameters ({llm:.2f} B in the LLM)")
    pgdfc = AnswerOptions(pgdfc_mode="attention", s=8, max_new_tokens=new_tokens)
    thumb = AnswerOptions(pgdfc_mode="off", s=0, max_new_tokens=new_tokens)
    variants = [("16-bit", None)] + [("4-bit", "4bit")] * (missing is None)
    for label, quantization in variants:
        if quantization is not None:
            quantize_4bit(model.language_model.get_decoder(), dtype)
        free(device)
        built = allocated_gb(device)
        engine = Engine(model, build_tiny_tokenizer(), model_id="omnipath-13b-shapes",
                        revision=None, demo=True, stop_token_ids=set())  # fmt: skip
        with open_slide(slide_path) as slide:
            list(engine.answer(slide, [], QUESTION, pgdfc))  # warm-up, fills the thumbnail cache
            free(device)
            times = {}
            for name, options in (("pgdfc", pgdfc), ("thumb", thumb)):
                runs = []
                for _ in range(3):
                    engine.details.clear()
                    *_, answer = engine.answer(slide, [], QUESTION, options)
                    if answer.error:
                        raise RuntimeError(answer.error)
                    runs.append(answer.timings["total"])
                times[name] = statistics.median(runs)
        peak = peak_gb(device)
        ratio = times["pgdfc"] / times["thumb"]
        goal = "" if peak is None or quantization is None else (
            f" (goal ≤ {GOAL_4BIT_PEAK_GB:g} GB: {'met' if peak <= GOAL_4BIT_PEAK_GB else 'NOT met'})"
        )  # fmt: skip
        print(f"{label}: built {gb(built)}, peak while answering {gb(peak)}{goal}; PGDFC "
              f"{times['pgdfc']:.2f} s vs thumbnail-only {times['thumb']:.2f} s = {ratio:.2f}x "
              f"(goal ≤ {GOAL_PGDFC_VS_THUMB:g}x: "
              f"{'met' if ratio <= GOAL_PGDFC_VS_THUMB else 'NOT met'})", flush=True)  # fmt: skip
        del engine
    if missing is not None:
        print(f"4-bit skipped: {missing}.")
    del model
    free(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU dry run)")
    parser.add_argument("--slide-dir", default="/tmp", help="where the synthetic slide goes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU is visible: the GPU figures are skipped (run with --tiny --device cpu "
              "for a dry run of the same steps).")  # fmt: skip
        return 0
    # 16-bit: float16 on a GPU; bfloat16 on a CPU (several CPU kernels have no float16).
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    from omnipath.model import OmniPathForConditionalGeneration, omnipath_13b_config, tiny_config

    started = time.perf_counter()
    llm_speeds(TINY_LLM_SHAPES if args.tiny else LLM_SHAPES, device, dtype, args.new_tokens)
    side = (1200, 800) if args.tiny else (8192, 6144)
    slide = write_slide(Path(args.slide_dir) / f"gpu-check-{side[0]}x{side[1]}.png", *side)
    config = tiny_config if args.tiny else omnipath_13b_config
    omnipath_section(lambda: OmniPathForConditionalGeneration(config()), slide, device, dtype,
                     args.new_tokens)  # fmt: skip
    print(f"\ngpu_check.py done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
