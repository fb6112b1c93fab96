"""``ArtStyleImageClassificationPipeline``: the image-classification pipeline with less work per image on the host.

Use it through transformers' own ``pipeline`` factory (its documented ``pipeline_class`` argument; nothing in
transformers is patched, and plain ``pipeline("image-classification", model=folder)`` keeps the stock class)::

    from transformers import pipeline
    from artstyle.pipelines import ArtStyleImageClassificationPipeline

    classifier = pipeline("image-classification", model=folder, device="cuda", dtype=torch.bfloat16,
                          pipeline_class=ArtStyleImageClassificationPipeline)
    classifier(images, batch_size=128, num_workers=8)

Same inputs, arguments and outputs as ``ImageClassificationPipeline``; only where the work happens differs:

* ``preprocess`` (per image, in the DataLoader workers when ``num_workers > 0``) only resizes (and crops, if
  configured) the uint8 image, with the processor's own ``resize`` / ``center_crop`` methods (arrays and tensors go
  through the full processor call with ``do_rescale=False, do_normalize=False``): the worker skips the processor's
  per-call validation and the float conversion, and the batch that travels to the main process and on to the device
  is uint8 (1 byte per value instead of 4 for float32, 2 for bfloat16).
* ``_forward`` rescales and normalises the whole batch at once on the model's device with the processor's own
  ``rescale_and_normalize`` (the same float32 arithmetic as the processor) and casts it to the model's dtype, as the
  stock ``preprocess`` does per image.
* ``postprocess`` computes the scores with the stock pipeline's own numpy ``softmax`` / ``sigmoid`` and builds dicts
  for the ``top_k`` best labels only (one stable ``argsort``), instead of a dict for every label, sorted.

The pixel values the model sees are those of the stock pipeline (the same resize of the same uint8 image, the same
normalisation), and the scores are computed by the same functions. It needs the torchvision backend of the image
processor (``ViTImageProcessor``, what artstyle saves); with another processor use the stock pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import BatchFeature, ImageClassificationPipeline
from transformers.image_utils import load_image
from transformers.pipelines.image_classification import ClassificationFunction, sigmoid, softmax

from .processing import keeps_uint8, normalize_batch, resize_uint8


class ArtStyleImageClassificationPipeline(ImageClassificationPipeline):
    """``ImageClassificationPipeline`` that keeps images uint8 until the model's device (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not keeps_uint8(self.image_processor):
            raise ValueError(
                f"{type(self).__name__} needs a torchvision-backend image processor (e.g. ViTImageProcessor), got "
                f"{type(self.image_processor).__name__}; use the stock pipeline(\"image-classification\") instead"
            )
        # read once: a config attribute costs microseconds per access, and postprocess runs once per image
        self._function = self._default_function()
        self._id2label = dict(self.model.config.id2label)

    def preprocess(self, image, timeout=None):
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return self.image_processor(images=image, do_rescale=False, do_normalize=False, return_tensors="pt")
        # a PIL image (or a path / URL): the processor's own resize and crop steps, without its per-call validation
        pixels = resize_uint8(self.image_processor, load_image(image, timeout=timeout))
        return BatchFeature({"pixel_values": pixels[None]})

    def _forward(self, model_inputs):
        pixel_values = normalize_batch(self.image_processor, model_inputs["pixel_values"])
        return self.model(pixel_values=pixel_values.to(self.dtype))

    def _default_function(self) -> ClassificationFunction:
        """The stock pipeline's choice when ``function_to_apply`` is not given."""
        config = self.model.config
        if config.problem_type == "regression":
            return ClassificationFunction.NONE
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return ClassificationFunction.SIGMOID
        if config.problem_type == "single_label_classification" or config.num_labels > 1:
            return ClassificationFunction.SOFTMAX
        return ClassificationFunction(getattr(config, "function_to_apply", "none"))

    def postprocess(self, model_outputs, function_to_apply=None, top_k=5):
        function = self._function if function_to_apply is None else function_to_apply
        outputs = model_outputs["logits"][0].float().numpy()
        if function == ClassificationFunction.SIGMOID:
            scores = sigmoid(outputs)
        elif function == ClassificationFunction.SOFTMAX:
            scores = softmax(outputs)
        elif function == ClassificationFunction.NONE:
            scores = outputs
        else:
            raise ValueError(f"Unrecognized `function_to_apply` argument: {function}")
        best = np.argsort(-scores, kind="stable")[:top_k]  # the stock pipeline's order, ties included
        return [{"label": self._id2label[i], "score": v} for i, v in zip(best.tolist(), scores[best].tolist())]


__all__ = ["ArtStyleImageClassificationPipeline"]
