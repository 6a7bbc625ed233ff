"""Where a checkpoint's files are: a local folder, the hub cache, or the hub — decided fast.

`resolve_checkpoint(source)` turns a folder path or a hub id into a local folder in
`save_pretrained` format, plus the model id and revision to show and log.

Why not let transformers do it: with an unreachable hub, `from_pretrained("owner/name")` retries
for about 23 s before failing. Here the order is: the local cache first (no network at all),
then — unless `HF_HUB_OFFLINE` is set — one short reachability probe of the endpoint, and only
then a download. Every failure is a `ModelNotFoundError` whose message says what to do.

Environment variables are read at call time (not at import, as huggingface_hub's constants
are), so a process can change `HF_HUB_OFFLINE` / `HF_ENDPOINT` between loads.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from omnipath.errors import ModelLoadError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0

# The files a checkpoint needs: config, weights (safetensors preferred), tokenizer, processor,
# chat template. Keeping to these avoids pulling optimizer states, ONNX / GGUF exports, etc.
CHECKPOINT_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
]
# Fallback weights for repos without safetensors (older LLaVA uploads).
LEGACY_WEIGHT_PATTERNS = ["*.bin"]

_TRUE_VALUES = {"1", "on", "yes", "true"}
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint folder on local disk and what to call it.

    `folder` holds config.json (and weights); `model_id` is the hub id or the folder path as
    given; `revision` is the commit hash when one is known (hub snapshot, git checkout,
    `_commit_hash` in config.json), else None; `from_hub` says whether it came via the hub
    cache (downloaded now or before).
    """

    folder: Path
    model_id: str
    revision: str | None
    from_hub: bool


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` (or the older `TRANSFORMERS_OFFLINE`) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE_VALUES


def hub_endpoint() -> str:
    """The hub's base URL: `HF_ENDPOINT` when set, else https://huggingface.co (no trailing /)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def probe_endpoint(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request to the endpoint. Returns None when it answers (any HTTP status counts:
    the server is there), else a short reason (refused, timed out, name not resolved...)."""
    import httpx

    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            client.head(endpoint)
    except httpx.TimeoutException:
        return f"no answer within {timeout_s:g} s"
    except httpx.TransportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def is_hub_id(source: str) -> bool:
    """True when `source` is shaped like a hub repository id ("name" or "owner/name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if source.startswith((".", "/", "~")) or "\\" in source:
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def resolve_checkpoint(source: str) -> ResolvedCheckpoint:
    """Find the checkpoint named by `source` (an existing folder, or a hub id) on local disk,
    downloading it when the hub is allowed and reachable.

    Raises ModelNotFoundError (no such folder; not cached while offline; hub unreachable;
    no such repository) or ModelLoadError (other hub failures), each with a sentence saying
    what to do.
    """
    if not source.strip():
        raise ModelNotFoundError(
            "No model was named: give the path of a model folder or a hub id such as 'owner/name'."
        )
    folder = Path(source).expanduser()
    if folder.is_dir():
        return _resolve_folder(folder, source)
    if not is_hub_id(source):
        raise ModelNotFoundError(
            f"There is no model folder at '{source}'. Give the path of a folder written by "
            "save_pretrained, or a Hugging Face hub id such as 'owner/name'."
        )
    return _resolve_hub_id(source)


def _resolve_folder(folder: Path, source: str) -> ResolvedCheckpoint:
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"The folder '{source}' has no config.json, so it is not a saved model. Give a folder "
            "written by save_pretrained (config.json, weights and tokenizer files)."
        )
    hub_id = _hub_id_of_cache_snapshot(folder)
    return ResolvedCheckpoint(
        folder=folder,
        model_id=hub_id or source,
        revision=folder_revision(folder),
        from_hub=hub_id is not None,
    )


def _resolve_hub_id(repo_id: str) -> ResolvedCheckpoint:
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        logger.info("model %s: using the local hub cache at %s", repo_id, cached)
        return ResolvedCheckpoint(
            folder=cached, model_id=repo_id, revision=folder_revision(cached), from_hub=True
        )
    if hub_offline():
        raise ModelNotFoundError(
            f"'{repo_id}' is not a local folder nor in the local Hugging Face cache, and "
            "HF_HUB_OFFLINE is set, so it cannot be downloaded. Download it once on a machine "
            "with network access (or unset HF_HUB_OFFLINE), or give the path of a local model "
            "folder."
        )
    endpoint = hub_endpoint()
    unreachable = probe_endpoint(endpoint)
    if unreachable is not None:
        raise ModelNotFoundError(
            f"'{repo_id}' is not a local folder nor in the local Hugging Face cache, and the hub "
            f"at {endpoint} cannot be reached ({unreachable}). Check the network or HF_ENDPOINT, "
            "or give the path of a local model folder.",
            detail=unreachable,
        )
    folder = _download(repo_id, endpoint)
    return ResolvedCheckpoint(
        folder=folder, model_id=repo_id, revision=folder_revision(folder), from_hub=True
    )


def _cached_snapshot(repo_id: str) -> Path | None:
    """The complete cached snapshot of `repo_id` (main), or None. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id,
            local_files_only=True,
            allow_patterns=CHECKPOINT_PATTERNS + LEGACY_WEIGHT_PATTERNS,
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    folder = Path(path)
    # A snapshot with a config but no weights (e.g. someone fetched only config.json) is not a
    # usable cache entry: treat it as missing so that a reachable hub completes it.
    if not (folder / "config.json").is_file() or not _has_weights(folder):
        return None
    return folder


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def _download(repo_id: str, endpoint: str) -> Path:
    """Download the checkpoint files of `repo_id` into the hub cache; safetensors preferred."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        files = HfApi(endpoint=endpoint).list_repo_files(repo_id)
        patterns = list(CHECKPOINT_PATTERNS)
        if not any(name.endswith(".safetensors") for name in files):
            patterns += LEGACY_WEIGHT_PATTERNS
        path = snapshot_download(repo_id, allow_patterns=patterns, endpoint=endpoint)
    except GatedRepoError as error:
        raise ModelNotFoundError(
            f"The model '{repo_id}' is gated: accept its terms on the hub and log in "
            "(hf auth login or HF_TOKEN), then try again.",
            detail=repr(error),
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ModelNotFoundError(
            f"The hub has no model '{repo_id}' (or it is private). Check the id, or log in "
            "(hf auth login or HF_TOKEN) if it is private.",
            detail=repr(error),
        ) from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 404:
            raise ModelNotFoundError(
                f"{endpoint} answered 'not found' for the model '{repo_id}'. Check the id, and "
                "that HF_ENDPOINT (if set) points at a Hugging Face hub.",
                detail=repr(error),
            ) from error
        raise ModelLoadError(
            f"Downloading the model '{repo_id}' from {endpoint} failed (HTTP {status}). Try "
            "again later, or give the path of a local model folder.",
            detail=repr(error),
        ) from error
    except (LocalEntryNotFoundError, OSError) as error:
        raise ModelLoadError(
            f"Downloading the model '{repo_id}' from {endpoint} failed. Check the network and "
            "the free disk space, then try again.",
            detail=repr(error),
        ) from error
    return Path(path)


def folder_revision(folder: Path) -> str | None:
    """The commit hash a checkpoint folder was taken from, when it can be known.

    In order: a hub cache snapshot (…/snapshots/<hash>), a git checkout (.git/HEAD), then
    `_commit_hash` in config.json. None for a plain save_pretrained folder.
    """
    if folder.resolve().parent.name == "snapshots" and _COMMIT_HASH.match(folder.resolve().name):
        return folder.resolve().name
    git_hash = _git_head(folder / ".git")
    if git_hash is not None:
        return git_hash
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    commit = config.get("_commit_hash") if isinstance(config, dict) else None
    return commit if isinstance(commit, str) and commit else None


def _hub_id_of_cache_snapshot(folder: Path) -> str | None:
    """'owner/name' for a folder like …/models--owner--name/snapshots/<hash>, else None."""
    resolved = folder.resolve()
    if resolved.parent.name != "snapshots":
        return None
    repo_folder = resolved.parent.parent.name
    if not repo_folder.startswith("models--"):
        return None
    return repo_folder.removeprefix("models--").replace("--", "/")


def _git_head(git_dir: Path) -> str | None:
    """The commit hash HEAD points to in a plain git checkout, or None."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if _COMMIT_HASH.match(head):
        return head
    if not head.startswith("ref: "):
        return None
    ref = head.removeprefix("ref: ").strip()
    try:
        value = (git_dir / ref).read_text().strip()
        return value if _COMMIT_HASH.match(value) else None
    except OSError:
        pass
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _COMMIT_HASH.match(parts[0]):
                return parts[0]
    except OSError:
        return None
    return None
