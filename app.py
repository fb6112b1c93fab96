"""Browser app: classify the style of an image, show the model's fusion weights and Gram matrix, search a collection.

    pip install -e ".[app]"
    python app.py --model outputs/finetune --index path/to/images
    python app.py --model outputs/finetune --index outputs/demo-collection --demo_collection  # generated images

Serves on http://127.0.0.1:7860 by default (``--host 0.0.0.0`` to share it on the network; a Space sets
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` itself). Runs offline on CPU. The logic lives in
`artstyle.app_support`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.environ.get("ARTSTYLE_MODEL", "outputs/finetune"),
                        help="artstyle folder or Hub id: a fine-tuned classifier (styles + probabilities) or a "
                        "pretraining folder (embedding only); default $ARTSTYLE_MODEL or outputs/finetune")
    parser.add_argument("--index", default=os.environ.get("ARTSTYLE_INDEX"),
                        help="folder of images to search, indexed (recursively) at start; can also be set in the page")
    parser.add_argument("--index_dir", default=None,
                        help="where the index is kept (default: <index>/.artstyle-index, shared with artstyle-similar)")
    parser.add_argument("--demo_collection", action="store_true",
                        help="fill --index with generated demo images (8 per style) when it holds no images yet")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--max_pixels", type=int, default=None,
                        help="uploads with more pixels are refused before decoding (default 40 million)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from artstyle.app_support import DEFAULT_MAX_PIXELS, StyleApp, build_interface, write_demo_collection

    if args.demo_collection:
        if not args.index:
            print("app.py: error: --demo_collection needs --index FOLDER (where to write the images)", file=sys.stderr)
            return 2
        write_demo_collection(args.index)
    try:
        app, report = StyleApp.from_paths(args.model, args.index, args.index_dir,
                                          max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    except (OSError, ValueError) as err:
        print(f"app.py: error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("app").info(report)
    app.warm_up()
    page = build_interface(app, index_report=report, index_folder=args.index)
    page.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, show_error=True,
                                                   max_file_size="64mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
