"""Style datasets (offline ``datasets`` builders) and robust image decoding for training.

    from artstyle.data import load_style_dataset, StyleImageDataset, collate_skip_bad
    ds = load_style_dataset("demo")                        # train / validation / test, 6 styles
    ds = load_style_dataset("pandora18k", data_dir="...")  # or "ava", "flickr", "imagefolder", Hub id
"""

from .ava import AVA_STYLE_NAMES, AVAStyle
from .common import LocalBuilderConfig, default_cache_dir, stratified_split
from .demo import DEMO_STYLES, DemoStyle, DemoStyleConfig, render_demo_image
from .flickr import FLICKR_STYLE_NAMES, FlickrStyle
from .folders import ImageFolderStyle, Pandora18k
from .images import BadImageError, SkipCounter, StyleImageDataset, collate_skip_bad, open_image_rgb
from .loading import BUILDERS, build_dataset, load_hub_dataset, load_style_dataset, single_label_view

__all__ = [
    "AVA_STYLE_NAMES",
    "AVAStyle",
    "BUILDERS",
    "BadImageError",
    "DEMO_STYLES",
    "DemoStyle",
    "DemoStyleConfig",
    "FLICKR_STYLE_NAMES",
    "FlickrStyle",
    "ImageFolderStyle",
    "LocalBuilderConfig",
    "Pandora18k",
    "SkipCounter",
    "StyleImageDataset",
    "build_dataset",
    "collate_skip_bad",
    "default_cache_dir",
    "load_hub_dataset",
    "load_style_dataset",
    "open_image_rgb",
    "render_demo_image",
    "single_label_view",
    "stratified_split",
]
