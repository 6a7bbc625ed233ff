"""App benchmark: upload → viewer ready for a ≥ 1 GB slide, time to first token and to the whole
answer, and the throughput of 8 concurrent conversations relative to one.

    .venv/bin/python bench/app.py [--cache-dir data/bench] [--model tiny] [--concurrency 8]
    .venv/bin/python bench/app.py --upload-only

The real server (`python -m web`, its own process, so the client does not share its
CPU time) is driven through gradio_client, as a program or the browser would:
- upload: the named /upload endpoint with a synthetic JPEG slide of at least 1 GB (generated
  once into the cache dir, then reused), then the DZI descriptor and every tile of the level a
  viewer shows first (the whole slide in about 1000 px): "viewer ready"; beside it, as a ratio,
  one plain copy of the file on the same disk (--upload-only stops after this figure);
- answers: /ask streamed; the first text update is the first token, the final update the
  whole answer (median of several questions);
- concurrency: one conversation asking N questions in a row, then C conversations asking N
  each at the same time; printed as ratios against the one conversation alone: answers/s,
  aggregate generated tokens/s (goal ≥ 3× for 8 with the mini) and the p95 time to first
  token (goal ≤ 2×).
All figures come from this one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

GB = 10**9  # decimal gigabytes, as disks and uploads are counted
# JPEG quality 95 gives ~0.42 bytes per pixel on the synthetic tissue: 61440 × 40960 ≈ 1.07 GB
SLIDE_W, SLIDE_H, QUALITY = 61440, 40960, 95
QUESTIONS = (
    "Where is the lesion?",
    "What is the grade of the most atypical area?",
    "Describe the tissue.",
    "Are there mitoses?",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_big_slide(cache_dir: Path, min_bytes: int) -> Path:
    from web.sample import ensure_synthetic_slide

    path = cache_dir / f"synthetic-{SLIDE_W}x{SLIDE_H}-seed0-q{QUALITY}.tiff"
    if not path.is_file():
        print(f"generating a {SLIDE_W} × {SLIDE_H} synthetic slide into {path} (once)…", flush=True)
        start = time.perf_counter()
        ensure_synthetic_slide(path, SLIDE_W, SLIDE_H, seed=0, quality=QUALITY)
        print(f"  generated in {time.perf_counter() - start:.0f} s", flush=True)
    size = path.stat().st_size
    if size < min_bytes:
        raise SystemExit(f"the benchmark slide is {size / GB:.2f} GB, less than asked")
    return path


def start_server(port: int, data_dir: Path, model: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMNIPATH_MODEL": model,
        "OMNIPATH_DATABASE_URL": f"sqlite:///{data_dir / 'bench.db'}",
        "PYTHONPATH": str(REPO),
    }
    command = [
        sys.executable, "-m", "web", "--port", str(port),
        "--data-dir", str(data_dir), "--no-sample-slide",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the app server exited while starting")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("the app server did not start within 180 s")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def first_view_tiles(width: int, height: int, view_px: int = 1000, tile: int = 254) -> list:
    """(dz_level, col, row) of the level at which the whole slide fits in about view_px."""
    max_level = math.ceil(math.log2(max(width, height)))
    level = max_level
    while level > 0 and max(width, height) / 2 ** (max_level - level) > view_px:
        level -= 1
    scale = 2 ** (max_level - level)
    level_w, level_h = math.ceil(width / scale), math.ceil(height / scale)
    return [
        (level, col, row)
        for row in range(math.ceil(level_h / tile))
        for col in range(math.ceil(level_w / tile))
    ]


def bench_upload(client, base_url: str, slide: Path) -> dict:
    from gradio_client import handle_file

    start = time.perf_counter()
    result = client.predict(handle_file(str(slide)), api_name="/upload")
    uploaded = time.perf_counter()
    slide_id, meta = result["slide_id"], result["meta"]
    _get(f"{base_url}slides/{slide_id}.dzi")
    tiles = first_view_tiles(meta["l0_width"], meta["l0_height"])
    for level, col, row in tiles:
        _get(f"{base_url}slides/{slide_id}_files/{level}/{col}_{row}.jpeg")
    ready = time.perf_counter()
    receive_s = bench_receive(client, slide)  # after: the same warm page cache for both
    return {
        "conversation_id": result["conversation_id"],
        "receive_s": receive_s,
        "upload_s": uploaded - start,
        "ready_s": ready - start,
        "tiles": len(tiles),
    }


def bench_receive(client, slide: Path) -> float:
    """Seconds Gradio alone takes to receive the file: the bare POST to its upload route that
    gradio_client makes before /upload runs. The copy it received is deleted."""
    import httpx

    start = time.perf_counter()
    with open(slide, "rb") as handle:
        files = [("files", (slide.name, handle))]
        response = httpx.post(client.upload_url, files=files, timeout=600)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    for received in response.json():
        Path(received).unlink(missing_ok=True)
    return elapsed


def plain_copy_s(slide: Path, folder: Path) -> float:
    """Seconds for one plain copy of the slide on the server's disk: the baseline of the upload
    figure (receiving an upload writes the bytes once at least)."""
    copy = folder / "plain-copy"
    start = time.perf_counter()
    shutil.copyfile(slide, copy)
    elapsed = time.perf_counter() - start
    copy.unlink()
    return elapsed


def upload_report(upload: dict, size: int, copy_s: float) -> str:
    return (
        f"upload → viewer ready: {upload['ready_s']:.1f} s "
        f"(upload + hash + store + thumbnail {upload['upload_s']:.1f} s, of which Gradio "
        f"receiving the file alone takes {upload['receive_s']:.1f} s, "
        f"then the DZI and {upload['tiles']} first-view tiles "
        f"{upload['ready_s'] - upload['upload_s']:.1f} s); "
        f"{size / GB / upload['ready_s']:.2f} GB/s; a plain copy of the file: {copy_s:.1f} s; "
        f"ratio upload → viewer ready / plain copy = {upload['ready_s'] / copy_s:.2f}×"
    )


def ask_once(client, conversation_id: str, question: str, s: int, max_new_tokens: int) -> dict:
    start = time.perf_counter()
    job = client.submit(
        conversation_id, question, "attention", s, max_new_tokens, 0.0, "", api_name="/ask"
    )
    first = None
    final = None
    for update in job:
        if first is None and update.get("text"):
            first = time.perf_counter() - start
        if update.get("done"):
            final = update
    final = final or job.result()
    total = time.perf_counter() - start
    tokens = final["answer"]["tokens"].get("generated", 0)
    return {"ttft": first if first is not None else total, "total": total, "tokens": tokens}


def p95(values: list[float]) -> float:
    """The 95th percentile (inclusive method: the largest value for fewer than 20 samples)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def bench_concurrency(
    base_url: str, conversations: list[str], per_conversation: int, s: int, max_new_tokens: int
) -> tuple[float, list[dict]]:
    """Each conversation asks `per_conversation` questions in a row, all conversations at once.
    Returns (wall seconds, ask_once()'s record of every answer)."""
    from gradio_client import Client

    clients = [Client(base_url, verbose=False) for _ in conversations]
    errors: list[BaseException] = []
    records: list[dict] = []

    def run(client, conversation_id: str) -> None:
        try:
            for i in range(per_conversation):
                question = QUESTIONS[i % len(QUESTIONS)]
                records.append(ask_once(client, conversation_id, question, s, max_new_tokens))
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(c, cid))
        for c, cid in zip(clients, conversations, strict=True)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"a concurrent answer failed: {errors[0]!r}")
    return wall, records


def concurrency_figures(wall_1: float, alone: list[dict], wall_c: float, together: list[dict]):
    """Answers/s, aggregate generated tokens/s and p95 time to first token, alone and
    together, and the ratios together / alone."""
    figures = {
        "answers_per_s_1": len(alone) / wall_1,
        "answers_per_s_c": len(together) / wall_c,
        "tokens_per_s_1": sum(r["tokens"] for r in alone) / wall_1,
        "tokens_per_s_c": sum(r["tokens"] for r in together) / wall_c,
        "p95_ttft_1": p95([r["ttft"] for r in alone]),
        "p95_ttft_c": p95([r["ttft"] for r in together]),
    }
    figures["ratio"] = figures["answers_per_s_c"] / figures["answers_per_s_1"]
    figures["tokens_ratio"] = figures["tokens_per_s_c"] / figures["tokens_per_s_1"]
    figures["p95_ttft_ratio"] = figures["p95_ttft_c"] / figures["p95_ttft_1"]
    return figures


def print_concurrency(
    concurrency: int, wall_1: float, alone: list, wall_c: float, together: list, figures: dict
) -> None:
    f = figures
    print(
        f"1 conversation alone: {f['answers_per_s_1']:.2f} answers/s, "
        f"{f['tokens_per_s_1']:.1f} tokens/s, p95 first token {f['p95_ttft_1']:.2f} s "
        f"({len(alone)} answers in {wall_1:.1f} s)"
    )
    print(
        f"{concurrency} concurrent conversations: {f['answers_per_s_c']:.2f} answers/s, "
        f"{f['tokens_per_s_c']:.1f} tokens/s, p95 first token {f['p95_ttft_c']:.2f} s "
        f"({len(together)} answers in {wall_c:.1f} s)"
    )
    print(
        f"ratios {concurrency} concurrent / 1 alone: answers/s {f['ratio']:.2f}×, "
        f"aggregate tokens/s {f['tokens_ratio']:.2f}× (goal ≥ 3×), "
        f"p95 time to first token {f['p95_ttft_ratio']:.2f}× (goal ≤ 2×)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--min-gb", type=float, default=1.0)
    parser.add_argument("--s", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--questions", type=int, default=5, help="for time to first token")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-conversation", type=int, default=3)
    parser.add_argument(
        "--upload-only", action="store_true", help="only the upload → viewer ready figure"
    )
    args = parser.parse_args(argv)

    from gradio_client import Client

    slide = ensure_big_slide(args.cache_dir, int(args.min_gb * GB))
    work = Path(tempfile.mkdtemp(prefix="omnipath-bench-app-", dir=args.cache_dir))
    port = _free_port()
    try:
        copy_s = plain_copy_s(slide, work)
        server = start_server(port, work / "data", args.model)
    except BaseException:  # no server to stop, but the scratch folder goes
        shutil.rmtree(work, ignore_errors=True)
        raise
    base_url = f"http://127.0.0.1:{port}/"
    try:
        client = Client(base_url, verbose=False)
        size = slide.stat().st_size
        upload = bench_upload(client, base_url, slide)
        upload_figures = {
            "slide_gb": round(size / GB, 3), "upload_to_viewer_ready_s": round(upload["ready_s"], 2),
            "receive_s": round(upload["receive_s"], 2), "plain_copy_s": round(copy_s, 2),
            "upload_ratio": round(upload["ready_s"] / copy_s, 3),
        }  # fmt: skip
        if args.upload_only:
            print(f"\n{os.cpu_count()} CPU cores, server in its own process")
            print(f"slide: {slide.name}, {size / GB:.2f} GB")
            print(upload_report(upload, size, copy_s))
            print(json.dumps(upload_figures))
            return 0
        conversation = upload["conversation_id"]

        ask_once(client, conversation, "Warm-up question.", args.s, args.max_new_tokens)
        runs = [
            ask_once(client, conversation, QUESTIONS[i % len(QUESTIONS)], args.s,
                     args.max_new_tokens)
            for i in range(args.questions)
        ]  # fmt: skip
        ttft = statistics.median(r["ttft"] for r in runs)
        total = statistics.median(r["total"] for r in runs)
        tokens = statistics.median(r["tokens"] for r in runs)

        # fresh conversations for the throughput runs (each its own history)
        from gradio_client import handle_file

        small = work / "small.tiff"
        from omnipath.synth import write_synthetic_slide

        write_synthetic_slide(small, 4096, 3072, seed=1)
        ids = [
            client.predict(handle_file(str(small)), api_name="/upload")["conversation_id"]
            for _ in range(args.concurrency)
        ]
        for warm_id in ids:  # each slide's thumbnail and vision features once, untimed
            ask_once(client, warm_id, "Warm-up question.", args.s, args.max_new_tokens)
        wall_1, alone = bench_concurrency(
            base_url, ids[:1], args.per_conversation, args.s, args.max_new_tokens
        )
        wall_c, together = bench_concurrency(
            base_url, ids, args.per_conversation, args.s, args.max_new_tokens
        )
        figures = concurrency_figures(wall_1, alone, wall_c, together)

        print()
        print(
            f"model {args.model}, S = {args.s}, max new tokens {args.max_new_tokens}, "
            f"{os.cpu_count()} CPU cores, server in its own process"
        )
        print(f"slide: {slide.name}, {size / GB:.2f} GB")
        print(upload_report(upload, size, copy_s))
        print(
            f"time to first token: {ttft:.2f} s, whole answer: {total:.2f} s "
            f"(median of {len(runs)}, {tokens:.0f} tokens); "
            f"first token / whole answer = {ttft / total:.2f}"
        )
        print_concurrency(args.concurrency, wall_1, alone, wall_c, together, figures)
        print(json.dumps({
            **upload_figures, "ttft_s": round(ttft, 3), "answer_s": round(total, 3),
            "concurrency": args.concurrency,
            **{name: round(value, 3) for name, value in figures.items()},
        }))  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
