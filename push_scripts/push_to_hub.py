#!/usr/bin/env python
"""Push an hf_transfer output folder (or one checkpoint-N in it) to the Hugging Face Hub, after checking it.

    python push_scripts/push_to_hub.py outputs/finetune-efficientnet_lite0-mnist --repo_id me/lite0-mnist --dry_run
    python push_scripts/push_to_hub.py outputs/finetune-efficientnet_lite0-mnist --repo_id me/lite0-mnist --private

Before uploading it checks that the run finished (all_results.json), that weights, class names and preprocessing are
there, writes the model card if it is missing, and reloads the folder with AutoModelForImageClassification.
--dry_run lists exactly the files it would upload and touches no network. The token comes from `hf auth login`
or HF_TOKEN and is never printed.
"""

import argparse
from pathlib import Path

from hf_transfer.errors import exit_on_user_error
from hf_transfer.hub import describe_files, push_folder

PROG = "push_to_hub"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an hf_transfer output folder, or one checkpoint-N folder in it")
    parser.add_argument("--repo_id", required=True, help="the Hub model repository, user/name or org/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--include_checkpoints", action="store_true", help="upload checkpoint-* folders too")
    parser.add_argument("--dry_run", action="store_true", help="check and list the files; upload nothing")
    args = parser.parse_args(argv)
    with exit_on_user_error(PROG):
        result = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                             commit_message=args.commit_message, include_checkpoints=args.include_checkpoints,
                             dry_run=args.dry_run)
    for note in result.notes:
        print(note)
    if args.dry_run:
        print(f"dry run: checks passed; would upload to {result.repo_id} (revision {result.revision}"
              f"{', private' if args.private else ''}):")
        print(describe_files(result.files))
    else:
        print(f"pushed {len(result.files)} files from {args.folder} to {result.url}")
    return result


if __name__ == "__main__":
    main()
