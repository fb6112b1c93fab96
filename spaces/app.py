"""Hugging Face Space entry point: the artstyle app with the model in ``model/`` and the collection in ``collection/``.

Copy the ``artstyle`` package next to this file (see README.md), or install it from requirements.txt.
"""

import os
from pathlib import Path

from artstyle.app_support import StyleApp, build_interface

HERE = Path(__file__).resolve().parent
model = os.environ.get("ARTSTYLE_MODEL", str(HERE / "model"))
index = os.environ.get("ARTSTYLE_INDEX") or (str(HERE / "collection") if (HERE / "collection").is_dir() else None)

app, report = StyleApp.from_paths(model, index, index_dir=os.environ.get("ARTSTYLE_INDEX_DIR"))
demo = build_interface(app, report, index, editable_index=False)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1).launch(max_file_size="64mb", show_error=True)
