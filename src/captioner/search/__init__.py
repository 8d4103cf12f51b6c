"""Search: a search's settings (``Search``, torch-free), its hypotheses and captions (torch-free, shared with the ONNX
runner), and the searches on the decoder interface (``decode``, torch). Only the settings are handed on here, so the
ONNX runner imports no torch."""
from captioner.search.settings import DEFAULT, Search, flag

__all__ = ["DEFAULT", "Search", "flag"]
