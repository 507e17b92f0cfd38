"""LLaVA-Mini (arXiv 2501.03895): one vision token per image via query compression + modality pre-fusion.

`configuration.py` and `modeling.py` hold the model (transformers-style, release state-dict names),
`loading.py` reads and writes the release's checkpoint layout, `build.py` derives a LLaVA-Mini from an
HF LLaVA, `adapter.py` plugs it into probe, `zoo.py` registers the family and `tiny-llava-mini`.
"""

from llava_mini.configuration import LlavaMiniConfig
from llava_mini.modeling import LlavaMiniForConditionalGeneration, LlavaMiniModel, Resampler

__all__ = ["LlavaMiniConfig", "LlavaMiniForConditionalGeneration", "LlavaMiniModel", "Resampler"]
