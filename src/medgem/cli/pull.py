"""`medgem pull MODEL`: download a model into the Hugging Face cache, after checking it fits.

Memory and disk are checked from the hub's file list BEFORE the first byte is fetched: a 27B
on a 16 GB laptop is refused in a second instead of after a 55 GB download. The download is
huggingface_hub's own (the normal cache, resumable: an interrupted pull continues where it
stopped), with its progress bar on a terminal and none otherwise.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgem.errors import GatedModelError, InputError, ModelNotFoundError, ResourceError

if TYPE_CHECKING:
    from medgem.hardware import Hardware


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pull", help="download a MedGemma variant or hub model (checks memory and disk first)",
        description="Download a model into the Hugging Face cache with a progress bar. Memory "
        "and disk are checked before the first byte; an interrupted pull resumes when run again.")
    parser.add_argument("model", metavar="MODEL", help="variant (4b-it, 27b-text-it, ...) or hub id")
    parser.add_argument("--revision", help="branch, tag or commit (default main)")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class PullPlan:
    """What a pull would fetch, known before fetching anything."""

    repo_id: str
    revision: str
    files: dict[str, int]  # file -> bytes
    parameters: int

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def repo_for(name: str) -> str:
    """The hub repository a pull name means.

    Raises:
        InputError: the demo model or a local model (nothing to pull), or an unknown name.
    """
    from medgem.catalog import DEMO_ALIAS, refuse_unknown
    from medgem.demo.build import DEMO_ID
    from medgem.request.variants import find_variant
    from medgem.resolve import HUB_ID

    if name.lower() in (DEMO_ALIAS, DEMO_ID):
        raise InputError("the demo model is built on this machine, not downloaded",
                         "run it with --model demo (the first run builds it)")
    variant = find_variant(name)
    if variant is not None:
        return variant.hf_id
    if HUB_ID.match(name) and not Path(name).exists():
        return name
    raise refuse_unknown(name)


def plan_pull(repo_id: str, revision: str | None) -> PullPlan:
    """Ask the hub what the repository holds (file sizes, parameter count); nothing downloaded.

    Raises:
        GatedModelError, ModelNotFoundError: the hub refused or has no such repository.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from medgem.request.variants import find_variant
    from medgem.resolve import ALLOW_PATTERNS

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelNotFoundError("HF_HUB_OFFLINE is set: `medgem pull` needs the hub",
                                 "unset HF_HUB_OFFLINE (HF_HUB_OFFLINE=0) and run it again")
    token = os.environ.get("HF_TOKEN") or None
    hint = (f"accept the Health AI Developer Foundations terms on https://huggingface.co/{repo_id} "
            "and set HF_TOKEN to a read token of that account")
    try:
        info = HfApi().model_info(repo_id, revision=revision or "main", files_metadata=True,
                                  token=token)
    except GatedRepoError as exc:
        raise GatedModelError(f"'{repo_id}' is gated and this account has no access", hint) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"'{repo_id}' has no revision '{revision}'", "check --revision") from exc
    except RepositoryNotFoundError as exc:
        if not token:
            raise GatedModelError(f"the hub refused '{repo_id}' without a token", hint) from exc
        raise ModelNotFoundError(f"no repository '{repo_id}' on the hub", "check the id") from exc
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"the hub could not list '{repo_id}' ({exc})", "retry later") from exc
    except OSError as exc:
        raise ModelNotFoundError(f"the hub could not be reached ({type(exc).__name__})",
                                 "check the network (HF_ENDPOINT) and try again") from exc
    files = {s.rfilename: int(s.size or 0) for s in info.siblings or []
             if any(fnmatch.fnmatch(s.rfilename, p) for p in ALLOW_PATTERNS)}
    variant = find_variant(repo_id)
    if variant is not None:
        parameters = int(variant.params_b * 1e9)
    elif info.safetensors is not None:
        parameters = int(info.safetensors.total)
    else:  # no metadata: bf16 weights hold two bytes a parameter
        parameters = sum(b for f, b in files.items() if f.endswith(".safetensors")) // 2
    return PullPlan(repo_id, str(info.sha or revision or "main"), files, parameters)


def check_room(plan: PullPlan, hardware: Hardware | None = None) -> str | None:
    """Refuse a model this machine cannot run, or cannot store, before downloading.

    The model is refused when it does not fit even at the smallest precision medgem runs here
    (a Q4_K_M GGUF on a CPU, 4-bit on a GPU). Returns a note when it fits only that way.

    Args:
        plan: what the pull would fetch.
        hardware: this machine (detected when not given).

    Raises:
        ResourceError: not enough memory or disk, with what was needed and what is there.
    """
    from huggingface_hub.constants import HF_HUB_CACHE

    from medgem.hardware import GIB, detect_hardware
    from medgem.memory import check_fits, estimate

    hardware = hardware or detect_hardware()
    device, smallest, usual = ("cuda", "4bit", "bfloat16") if hardware.cuda \
        else ("cpu", "q4_k_m", "bfloat16")
    try:
        check_fits(plan.parameters, smallest, device, hardware)
    except ResourceError as exc:
        raise ResourceError(f"{plan.repo_id} will not run on this machine, so nothing was "
                            f"downloaded: {exc.message}", exc.hint) from exc
    need = _still_to_fetch(plan, Path(HF_HUB_CACHE))
    free = shutil.disk_usage(_existing_parent(Path(HF_HUB_CACHE))).free
    if need > free:
        raise ResourceError(
            f"{plan.repo_id} needs {need / 1e9:.1f} GB of disk but {HF_HUB_CACHE} has "
            f"{free / 1e9:.1f} GB free, so nothing was downloaded",
            "free some space, or set HF_HUB_CACHE to a bigger disk")
    try:
        check_fits(plan.parameters, usual, device, hardware)
    except ResourceError:
        gib = estimate(plan.parameters, smallest).total_bytes / GIB
        how = "--quantize 4bit" if device == "cuda" else \
            f"a Q4_K_M GGUF: `medgem convert {plan.repo_id}` after the pull"
        return f"in {usual} it will not fit here; it runs as {how} (about {gib:.1f} GiB)"
    return None


def _still_to_fetch(plan: PullPlan, cache: Path) -> int:
    snapshot = cache / ("models--" + plan.repo_id.replace("/", "--")) / "snapshots" / plan.revision
    return sum(size for name, size in plan.files.items() if not (snapshot / name).is_file())


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    from medgem.catalog import human_size, record_pulled
    from medgem.resolve import ALLOW_PATTERNS

    repo_id = repo_for(args.model)
    plan = plan_pull(repo_id, args.revision)
    note = check_room(plan)
    err = sys.stderr
    err.write(f"medgem: pulling {repo_id} ({human_size(plan.total_bytes)} in "
              f"{len(plan.files)} files, about {plan.parameters / 1e9:.2g}B parameters)\n")
    if note:
        err.write(f"medgem: note: {note}\n")
    err.flush()
    if not err.isatty():
        disable_progress_bars()  # no bars in logs and pipes
    try:
        folder = snapshot_download(repo_id, revision=plan.revision, allow_patterns=ALLOW_PATTERNS,
                                   token=os.environ.get("HF_TOKEN") or None)
    except KeyboardInterrupt:
        err.write(f"\nmedgem: download interrupted; `medgem pull {args.model}` resumes it\n")
        err.flush()
        # Download threads may be blocked on the network: leave now, the partial files stay.
        os._exit(130)
    except OSError as exc:
        raise ModelNotFoundError(f"the download of {repo_id} stopped ({exc})",
                                 f"run `medgem pull {args.model}` again to resume") from exc
    record_pulled(repo_id)
    print(f"pulled {repo_id} into {folder}")
    print(f"run it: medgem ask --model {args.model} \"your question\"")
    return 0
