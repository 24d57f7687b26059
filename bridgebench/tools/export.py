"""``python -m bridgebench export RUN OUT/ [--push-to-hub OWNER/NAME]``: a trained bridge as a folder to share.

RUN is a run folder (its ``checkpoints/last.ckpt`` is used) or a checkpoint file; OUT is a new or
empty folder. It receives the weights that no pretrained reference rebuilds (``model.safetensors``:
the trained ones and any the run loaded from other runs, such as an encoder trained by tagging),
what a reload needs (``bridgebench.json``: hyper-parameters, the frozen parts' references, the
run's instruction), the fit's resolved config and a model card. ``caption --ckpt OUT`` and
``BridgeModule.from_pretrained("OUT")`` load it; frozen parts come from their references, as when a
run is reloaded. ``--push-to-hub`` uploads OUT to a Hugging Face model repo with huggingface_hub
(the token of ``hf auth login`` or ``HF_TOKEN``), creating it if needed; ``--ckpt OWNER/NAME`` and
``from_pretrained("OWNER/NAME")`` then load it from the hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from bridgebench.errors import OutputError


def hub_api():
    """The client that uploads (huggingface_hub's ``HfApi``: the token of ``hf auth login`` or ``HF_TOKEN``)."""
    from huggingface_hub import HfApi

    return HfApi()


def push_to_hub(folder: Path, repo: str, private: bool, api=None) -> str:
    """Upload an export folder to hub model repo ``repo`` (created if missing) through ``api`` (an
    object with ``HfApi``'s ``create_repo`` and ``upload_folder``; default ``hub_api()``); returns its URL."""
    api = api or hub_api()
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder),
                          commit_message=f"bridgebench export of {folder.name}")
    except Exception as err:  # noqa: BLE001 - offline, no token, no rights, a bad name: one line each
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise OutputError(f"--push-to-hub {repo}: {reason} (the export itself is in {folder})") from None
    return str(url)


def main(argv: Optional[list[str]] = None) -> int:
    from bridgebench.engine.runs import export_run
    from bridgebench.runtime.env import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m bridgebench export", description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    parser.add_argument("out", metavar="OUT", help="new (or empty) folder for the export")
    parser.add_argument("--push-to-hub", metavar="OWNER/NAME", help="also upload OUT to this hub model repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo private")
    args = parser.parse_args(argv)
    quiet_libraries()
    files, notes = export_run(args.run, args.out)
    print(f"wrote {args.out}: {', '.join(p.name for p in files)}")
    for note in notes:
        print(f"note: {note}")
    where = args.out
    if args.push_to_hub:
        print(f"pushed to {push_to_hub(Path(args.out), args.push_to_hub, args.private)}")
        where = args.push_to_hub
    print(f"load it: python -m bridgebench caption AUDIO --ckpt {where}   |   "
          f"BridgeModule.from_pretrained({where!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
