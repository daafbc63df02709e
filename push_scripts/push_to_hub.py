#!/usr/bin/env python
"""Push an hf_transfer output folder to the Hugging Face Hub.

    python push_scripts/push_to_hub.py outputs/finetune-efficientnet_lite0-mnist user/lite0-mnist [--private]

The token comes from `huggingface-cli login` or HF_TOKEN and is never printed.
"""

import argparse
import sys
from pathlib import Path

REQUIRED = ("config.json", "model.safetensors")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--commit_message", default="Upload model fine-tuned with hf_transfer")
    args = parser.parse_args(argv)
    missing = [name for name in REQUIRED if not (args.folder / name).is_file()]
    if missing:
        sys.exit(f"push_to_hub: error: {args.folder} lacks {', '.join(missing)}; pass a finished hf_transfer output folder")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    url = api.upload_folder(folder_path=str(args.folder), repo_id=args.repo_id, commit_message=args.commit_message,
                            ignore_patterns=["checkpoint-*", ".staging*"])
    print(f"pushed {args.folder} to {url}")


if __name__ == "__main__":
    main()
