"""Pipelines for tokenizers: ``image-tokenization`` (image -> tokens -> reconstructed image) and an
``image-feature-extraction`` that runs only the encoder of a vistok tokenizer.

transformers 5.x removed ``image-to-image``; this task takes its place for visual tokenizers:

```python
>>> pipe = pipeline("image-tokenization", model="path/to/converted-titok")
>>> out = pipe("cat.png")     # {"tokens": [...], "latents": Tensor, "image": PIL.Image}
```
"""

from transformers import ImageFeatureExtractionPipeline, Pipeline
from transformers.image_utils import load_image

from ..registry import register_pipelines


class ImageTokenizationPipeline(Pipeline):
    """Encodes images with a vistok tokenizer and decodes them back.

    Call arguments: ``decode_kwargs`` (dict passed to ``model.decode``, e.g. ``{"num_steps": 25}``),
    ``return_reconstruction`` (default True), ``timeout`` for remote images.
    Returns per image: ``tokens`` (list of ids, or None for continuous tokenizers), ``latents`` ([N, D] tensor) and
    ``image`` (the reconstruction as a PIL image, when ``return_reconstruction``).
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, decode_kwargs=None, return_reconstruction=None, timeout=None, **kwargs):
        preprocess_params = {} if timeout is None else {"timeout": timeout}
        forward_params = {"decode_kwargs": decode_kwargs or {}}
        if return_reconstruction is not None:
            forward_params["return_reconstruction"] = return_reconstruction
        return preprocess_params, forward_params, {}

    def preprocess(self, image, timeout=None):
        image = load_image(image, timeout=timeout)
        inputs = self.image_processor(image, return_tensors="pt")
        return inputs.to(self.dtype) if self.dtype is not None else inputs

    def _forward(self, model_inputs, decode_kwargs=None, return_reconstruction=True):
        encoded = self.model.encode(model_inputs["pixel_values"])
        outputs = {"tokens": encoded.tokens, "latents": encoded.latents}
        if return_reconstruction:
            source = encoded.tokens if encoded.tokens is not None else encoded.latents
            outputs["reconstruction"] = self.model.decode(source, **(decode_kwargs or {})).reconstruction
        return outputs

    def postprocess(self, model_outputs):
        tokens = model_outputs["tokens"]
        result = {
            "tokens": None if tokens is None else tokens[0].tolist(),
            "latents": model_outputs["latents"][0].float().cpu(),
        }
        if "reconstruction" in model_outputs:
            result["image"] = self.image_processor.postprocess(model_outputs["reconstruction"])[0]
        return result


class TokenizerFeatureExtractionPipeline(ImageFeatureExtractionPipeline):
    """transformers' `image-feature-extraction`, running only the encoder of a vistok tokenizer (its `latents`,
    [N, D] per image) instead of a whole encode-decode pass; other models run as in transformers."""

    def _forward(self, model_inputs):
        if hasattr(self.model, "encode") and hasattr(self.model, "layout"):
            return (self.model.encode(model_inputs["pixel_values"]).latents,)
        return super()._forward(model_inputs)


__all__ = ["ImageTokenizationPipeline", "TokenizerFeatureExtractionPipeline"]


register_pipelines()  # completes the registration if this module was imported before transformers.pipelines
