"""``compdiff serve``: a local web app to compose concepts and generate images.

``compdiff.web.core`` holds the logic (pure Python over the library, no Gradio);
``compdiff.web.app`` lays it out as a Gradio page (install the extra: ``pip install 'compdiff[web]'``).
Importing ``compdiff`` or ``compdiff.web`` does not import Gradio.
"""
from compdiff.web.core import Limits, ModelStore, Settings, generate

__all__ = ["Limits", "ModelStore", "Settings", "generate"]
