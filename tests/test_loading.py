"""load_model: sources (tiny, folder, hub cache, hub), precision, quantization, attention,
errors. No test touches the real hub: hub ids are unique and uncached, the hub cache is a
tmp_path, and the endpoint is a local closed port or a local stub server."""

from __future__ import annotations

import gc
import http.server
import json
import socket
import sys
import threading
import uuid
import weakref

import pytest
import torch
from torch import nn

from omnipath.errors import (
    DeviceOutOfMemoryError,
    ModelLoadError,
    ModelNotFoundError,
    PrecisionError,
)
from omnipath.model import hub, loading
from omnipath.model.loading import (
    LoadOptions,
    LoadOutOfMemoryError,
    bitsandbytes_problem,
    choose_attn_implementation,
    llm_only_skip_modules,
    load_model,
    resolve_dtype,
)

CPU32 = LoadOptions(dtype="float32", device="cpu")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _isolated_hub(monkeypatch, tmp_path):
    """An empty hub cache, no offline flag, and an endpoint nobody listens on."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _uncached_id() -> str:
    return f"omnipath-tests/absent-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", CPU32)


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-omnipath")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def _images(n: int = 1, side: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1))


# --- tiny ---------------------------------------------------------------------------------------


def test_tiny_loads_float32_on_cpu(tiny):
    assert (tiny.kind, tiny.model_id, tiny.revision) == ("tiny", "tiny", None)
    assert (tiny.dtype, tiny.device, tiny.quantization) == ("float32", "cpu", None)
    assert tiny.attn_implementation == "sdpa"
    assert {p.dtype for p in tiny.model.parameters()} == {torch.float32}
    assert not tiny.model.training
    image_id = tiny.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == tiny.model.config.image_token_id


def test_tiny_is_seeded_and_leaves_the_global_rng_alone(tiny):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    again = load_model("tiny", CPU32)
    assert torch.equal(torch.rand(1), expected_next)
    for (name, a), (_, b) in zip(
        tiny.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tiny_in_bfloat16_on_cpu_runs():
    result = load_model("tiny", LoadOptions(dtype="bfloat16", device="cpu"))
    assert result.dtype == "bfloat16" and result.torch_dtype == torch.bfloat16
    with torch.no_grad():
        tokens, _ = result.model.encode_images(_images())
    assert tokens.dtype == torch.bfloat16
    assert torch.isfinite(tokens.float()).all()


# --- precision and attention choices ----------------------------------------------------------


def test_float16_on_cpu_is_refused_with_a_sentence():
    with pytest.raises(PrecisionError, match="float16 is not available on the CPU"):
        load_model("tiny", LoadOptions(dtype="float16", device="cpu"))


@pytest.mark.parametrize(
    "options",
    [
        LoadOptions(dtype="float8", device="cpu"),
        LoadOptions(quantization="3bit", device="cpu"),
    ],
)
def test_unknown_precision_is_a_precision_error(options):
    with pytest.raises(PrecisionError, match="not known"):
        load_model("tiny", options)


def test_unknown_device_and_attention_are_load_errors():
    with pytest.raises(ModelLoadError, match="device"):
        load_model("tiny", LoadOptions(device="tpu"))
    with pytest.raises(ModelLoadError, match="attention"):
        load_model("tiny", LoadOptions(device="cpu", attn_implementation="fast"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_load_error():
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model("tiny", LoadOptions(device="cuda"))


def test_auto_dtype():
    assert resolve_dtype("auto", "cpu", None) == torch.float32
    assert resolve_dtype("auto", "cuda", None) == torch.float16
    # quantized: what stays unquantized is 16-bit, bf16 on a CPU (no fp16 kernels there)
    assert resolve_dtype("auto", "cpu", "4bit") == torch.bfloat16
    assert resolve_dtype("auto", "cuda", "8bit") == torch.float16
    assert resolve_dtype("bfloat16", "cpu", None) == torch.bfloat16


def test_attention_choice():
    fp16, fp32 = torch.float16, torch.float32
    assert choose_attn_implementation("auto", "cuda", fp16, flash_available=True) == (
        "flash_attention_2"
    )
    assert choose_attn_implementation("auto", "cuda", fp16, flash_available=False) == "sdpa"
    assert choose_attn_implementation("auto", "cpu", fp32, flash_available=True) == "sdpa"
    # flash-attn has no float32 kernels
    assert choose_attn_implementation("auto", "cuda", fp32, flash_available=True) == "sdpa"
    assert choose_attn_implementation("eager", "cpu", fp32, flash_available=False) == "eager"
    with pytest.raises(ModelLoadError, match="flash-attn is not installed or cannot be imported"):
        choose_attn_implementation("flash_attention_2", "cuda", fp16, flash_available=False)
    with pytest.raises(ModelLoadError, match="CUDA"):
        choose_attn_implementation("flash_attention_2", "cpu", fp32, flash_available=True)


def test_auto_attention_follows_flash_attn_importability(monkeypatch):
    monkeypatch.setattr(loading, "flash_attn_importable", lambda: True)
    assert choose_attn_implementation("auto", "cuda", torch.float16) == "flash_attention_2"
    monkeypatch.setattr(loading, "flash_attn_importable", lambda: False)
    assert choose_attn_implementation("auto", "cuda", torch.float16) == "sdpa"


def test_a_flash_attn_that_fails_to_import_means_sdpa(monkeypatch):
    """A wheel built for another torch: found by the package check, broken on import."""
    import importlib
    import importlib.util

    import transformers.utils

    real_import = importlib.import_module

    def broken_import(name, *args, **kwargs):
        if name == "flash_attn":
            raise ImportError("undefined symbol: _ZN3c10...")
        return real_import(name, *args, **kwargs)

    real_find_spec = importlib.util.find_spec

    def found(name, *args, **kwargs):
        return object() if name == "flash_attn" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(loading.importlib.util, "find_spec", found)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setattr(loading.importlib, "import_module", broken_import)
    loading.flash_attn_importable.cache_clear()
    try:
        assert loading.flash_attn_importable() is False
        assert choose_attn_implementation("auto", "cuda", torch.float16) == "sdpa"
    finally:
        loading.flash_attn_importable.cache_clear()


# --- folders -------------------------------------------------------------------------------------


def test_saved_folder_loads_as_omnipath_with_identical_outputs(tiny, tiny_folder):
    result = load_model(str(tiny_folder), CPU32)
    assert result.kind == "omnipath"
    assert result.model_id == str(tiny_folder)
    assert result.revision is None
    images = _images()
    with torch.no_grad():
        expected, _ = tiny.model.encode_images(images)
        got, _ = result.model.encode_images(images)
    torch.testing.assert_close(got, expected)


def _copy_as_cache_snapshot(source, cache_root, repo_id: str):
    """Lay `source`'s files out as the hub cache does: refs/main → snapshots/<commit>/."""
    repo_dir = cache_root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_hub_id_loads_from_the_cache_while_offline(tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    repo_id = "omnipath-tests/tiny"
    _copy_as_cache_snapshot(tiny_folder, tmp_path / "hub-cache", repo_id)
    assert huggingface_hub.constants.HF_HUB_CACHE == str(tmp_path / "hub-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = load_model(repo_id, CPU32)
    assert (result.kind, result.model_id, result.revision) == ("omnipath", repo_id, COMMIT)


def test_cached_hub_id_never_probes_the_network(tiny_folder, tmp_path, monkeypatch):
    repo_id = "omnipath-tests/tiny"
    _copy_as_cache_snapshot(tiny_folder, tmp_path / "hub-cache", repo_id)

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have been enough")

    monkeypatch.setattr(hub, "probe_endpoint", no_network)
    assert load_model(repo_id, CPU32).revision == COMMIT


def test_snapshot_folder_path_reports_hub_id_and_commit(tiny_folder, tmp_path):
    snapshot = _copy_as_cache_snapshot(tiny_folder, tmp_path / "elsewhere", "owner/name")
    result = load_model(str(snapshot), CPU32)
    assert (result.model_id, result.revision) == ("owner/name", COMMIT)


def test_revision_from_a_git_checkout(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(COMMIT + "\n")
    assert hub.folder_revision(tmp_path) == COMMIT


def test_revision_from_config_commit_hash(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_commit_hash": COMMIT}))
    assert hub.folder_revision(tmp_path) == COMMIT


def test_missing_folder_is_model_not_found():
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_model("./no/such/model-folder", CPU32)


def test_empty_source_is_model_not_found():
    with pytest.raises(ModelNotFoundError, match="No model was named"):
        load_model("  ", CPU32)


def test_folder_without_config_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path), CPU32)


def test_unsupported_model_type_is_a_load_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert' model"):
        load_model(str(tmp_path), CPU32)


def test_truncated_weights_are_a_load_error(tiny_folder, tmp_path):
    for path in tiny_folder.iterdir():
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            data = data[: len(data) // 2]
        (tmp_path / path.name).write_bytes(data)
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(str(tmp_path), CPU32)


def test_folder_without_tokenizer_is_a_load_error(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(str(tmp_path), CPU32)


# --- the hub: offline, unreachable, fast ---------------------------------------------------------


def test_offline_and_uncached_is_model_not_found(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("offline mode must not probe the hub")

    monkeypatch.setattr(hub, "probe_endpoint", no_network)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_model(_uncached_id(), CPU32)


def test_unreachable_hub_fails_at_once_with_a_typed_error(monkeypatch):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(ModelNotFoundError, match="cannot be reached") as caught:
        load_model(_uncached_id(), CPU32)
    assert endpoint in caught.value.message
    assert "network" in caught.value.message


def test_probe_gives_up_on_a_silent_server():
    """A server that accepts the connection but never answers: the probe's own timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        reason = hub.probe_endpoint(f"http://127.0.0.1:{port}", timeout_s=0.2)
    assert reason is not None and "no answer" in reason


def test_probe_accepts_any_http_answer():
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's naming)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert hub.probe_endpoint(f"http://127.0.0.1:{server.server_port}", 2.0) is None
    finally:
        server.shutdown()
        server.server_close()


def test_hub_id_shapes():
    assert hub.is_hub_id("llava-hf/llava-1.5-7b-hf")
    assert not hub.is_hub_id("./models/x")
    assert not hub.is_hub_id("/abs/path")
    assert not hub.is_hub_id("a/b/c")


# --- out of memory ---------------------------------------------------------------------------------


def test_out_of_memory_frees_memory_and_the_next_load_works(monkeypatch):
    half_loaded: list[weakref.ref] = []
    freed: list[bool] = []

    def exhausting_build(plan):
        weights = nn.Linear(256, 256)
        half_loaded.append(weakref.ref(weights))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    real_free = loading.free_device_memory

    def recording_free():
        real_free()
        freed.append(half_loaded[0]() is None)

    monkeypatch.setattr(loading, "_build_tiny", exhausting_build)
    monkeypatch.setattr(loading, "free_device_memory", recording_free)
    with pytest.raises(LoadOutOfMemoryError, match="ran out of memory") as caught:
        load_model("tiny", CPU32)
    assert isinstance(caught.value, DeviceOutOfMemoryError)
    assert isinstance(caught.value, ModelLoadError)
    assert "Tried to allocate" in (caught.value.detail or "")
    assert freed == [True]  # gc had already dropped the half-loaded weights
    monkeypatch.undo()
    gc.collect()
    assert load_model("tiny", CPU32).kind == "tiny"


# --- quantization ---------------------------------------------------------------------------------


def test_skip_list_keeps_everything_but_the_llm_decoder_unquantized():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from omnipath.model import OmniPathForConditionalGeneration, tiny_config

    skip = llm_only_skip_modules(OmniPathForConditionalGeneration, tiny_config())
    assert "language_model.lm_head" in skip
    assert not any(name.startswith("language_model.model") for name in skip)
    assert {"projector", "mask_encoder", "mask_decoder"} <= set(skip)
    assert not any(
        name.startswith("language_model") for name in set(skip) - {"language_model.lm_head"}
    )
    llava_skip = llm_only_skip_modules(LlavaForConditionalGeneration, LlavaConfig())
    assert llava_skip == ["lm_head", "model.multi_modal_projector", "model.vision_tower"]


def test_four_bit_without_bitsandbytes_is_a_precision_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(PrecisionError, match="bitsandbytes is not installed"):
        load_model("tiny", LoadOptions(quantization="4bit", device="cpu"))


def test_quantization_the_device_cannot_run_is_a_precision_error(monkeypatch):
    """bitsandbytes installed but its kernels fail on this device (the one-layer smoke test)."""
    monkeypatch.setattr(
        loading, "_bitsandbytes_smoke_test", lambda quantization, device: "no kernel for cpu"
    )
    with pytest.raises(PrecisionError, match="no kernel for cpu"):
        load_model("tiny", LoadOptions(quantization="4bit", device="cpu"))


def _bnb_layers(module: nn.Module) -> list[str]:
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [name for name, m in module.named_modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_tiny_on_cpu_quantizes_the_llm_only(quantization, caplog):
    problem = bitsandbytes_problem(quantization, "cpu")
    if problem is not None:
        pytest.skip(f"bitsandbytes cannot run {quantization} on this CPU: {problem}")
    result = load_model("tiny", LoadOptions(quantization=quantization, device="cpu"))
    model = result.model
    assert (result.quantization, result.dtype) == (quantization, "bfloat16")
    decoder_layers = _bnb_layers(model.language_model.model)
    assert decoder_layers, "the LLM decoder's linear layers should be quantized"
    quantized_elsewhere = [
        name for name in _bnb_layers(model) if not name.startswith("language_model.model.")
    ]
    assert quantized_elsewhere == []  # towers, projector, mask modules, lm_head stay 16-bit
    for part in (model.projector, model.mask_encoder, model.mask_decoder):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    words = result.tokenizer("what is this?", add_special_tokens=False).input_ids
    ids = torch.tensor([[model.config.image_token_id] * model.num_image_tokens + words])
    with torch.no_grad():
        tokens, _ = model.encode_images(_images())
        merged = model.merge_embeddings(ids, model.embed_tokens(ids), tokens)
        with caplog.at_level("WARNING"):
            logits = model.language_model(inputs_embeds=merged).logits
    assert torch.isfinite(logits.float()).all()
    # bitsandbytes' per-matmul "inputs will be cast" warning is filtered (it floods the log)
    assert not [r for r in caplog.records if "will be cast" in r.getMessage()]


def test_reachable_hub_without_the_repository_is_model_not_found(monkeypatch):
    """A local stub hub that answers every request "repository not found"."""

    class NoSuchRepo(http.server.BaseHTTPRequestHandler):
        def _not_found(self):
            body = b'{"error": "Repository not found"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _not_found  # noqa: N815 (http.server's naming)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NoSuchRepo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        with pytest.raises(ModelNotFoundError, match="has no model"):
            load_model(_uncached_id(), CPU32)
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_is_not_a_hub_is_model_not_found(monkeypatch):
    """Plain 404s (no hub error code), e.g. HF_ENDPOINT pointing at some other web server."""

    class PlainNotFound(http.server.BaseHTTPRequestHandler):
        def _not_found(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _not_found  # noqa: N815 (http.server's naming)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), PlainNotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        with pytest.raises(ModelNotFoundError, match="not found"):
            load_model(_uncached_id(), CPU32)
    finally:
        server.shutdown()
        server.server_close()
