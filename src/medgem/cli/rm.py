"""`medgem rm MODEL`: delete what medgem put on this machine, and nothing else.

It deletes the files `medgem convert` wrote (as recorded when it wrote them), the demo model it
built, and MedGemma variants or models `medgem pull` fetched from the Hugging Face cache (through
huggingface_hub's own cache deletion). Paths, and checkpoints in model folders, are refused:
medgem did not create them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from medgem.errors import InputError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rm", help="delete a model medgem downloaded, converted or built",
        description="Delete a converted GGUF, the demo model, or a pulled model from the "
        "Hugging Face cache. Asks first unless --yes. Never deletes files medgem did not create.")
    parser.add_argument("model", metavar="MODEL", help="a name from `medgem models`")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medgem.catalog import (
        converted_files,
        forget,
        human_size,
        list_models,
        pulled_repos,
        refuse_unknown,
    )
    from medgem.config import load_settings
    from medgem.request.variants import find_variant

    name = args.model
    variant = find_variant(name)
    models = list_models(load_settings().model_dirs)
    wanted = name.lower()
    match = next((m for m in models if wanted in {m.name.lower(), *(a.lower() for a in m.aliases)}
                  or (variant is not None and m.name == variant.key)), None)
    if match is None and name in pulled_repos():
        return _remove_repo(name, name, args.yes)
    if match is None:
        if Path(name).expanduser().exists():
            raise InputError(f"'{name}' is a path medgem did not create",
                             "medgem rm deletes only models it downloaded, converted or built; "
                             "delete it yourself")
        raise refuse_unknown(name)
    if match.kind == "local":
        raise InputError(f"'{name}' is a checkpoint in your model folder {match.path}, which medgem "
                         "did not create", "delete it yourself if you mean to")
    if match.path is None:
        raise InputError(f"'{name}' is not on this machine", "`medgem models` lists what is")
    if match.kind in ("variant", "pulled"):
        return _remove_repo(name, match.hub_id or name, args.yes)
    if match.kind == "demo":
        if not _confirm(f"delete the demo model {match.path} ({human_size(match.size_bytes)})?",
                        args.yes):
            return 1
        shutil.rmtree(match.path)
        print(f"deleted {match.path}")
        return 0
    files = [f for f in converted_files(match.path) if f.is_file()]
    if not files:
        raise InputError(f"medgem has no record of writing '{name}'", "delete it yourself")
    if not _confirm(f"delete {', '.join(str(f) for f in files)} "
                    f"({human_size(sum(f.stat().st_size for f in files))})?", args.yes):
        return 1
    for file in files:
        file.unlink()
    try:
        match.path.rmdir()  # only when convert's files were all it held
    except OSError:
        pass
    forget(folder=match.path)
    print(f"deleted {name} ({len(files)} files)")
    return 0


def _remove_repo(name: str, repo_id: str, yes: bool) -> int:
    from huggingface_hub import scan_cache_dir

    from medgem.catalog import forget, human_size

    cache = scan_cache_dir()
    repo = next((r for r in cache.repos if r.repo_id == repo_id and r.repo_type == "model"), None)
    if repo is None:
        raise InputError(f"'{name}' is not in the Hugging Face cache", "`medgem models` lists what is")
    if not _confirm(f"delete {repo_id} from the Hugging Face cache ({repo.repo_path}, "
                    f"{human_size(repo.size_on_disk)})?", yes):
        return 1
    strategy = cache.delete_revisions(*(revision.commit_hash for revision in repo.revisions))
    strategy.execute()
    shutil.rmtree(repo.repo_path, ignore_errors=True)  # refs and partial downloads too
    forget(repo_id=repo_id)
    print(f"deleted {repo_id} ({human_size(strategy.expected_freed_size)} freed)")
    return 0


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    sys.stderr.write(f"medgem: {question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer in ("y", "yes"):
        return True
    sys.stderr.write("medgem: nothing deleted\n")
    return False
