"""PyTorch -> MindSpore checkpoint conversion: one module per upstream format.

Each format module defines:
    NAME: str                         e.g. "nvlabs-mit-imagenet"
    def matches(state_dict) -> bool   recognises its key names
    def convert(state_dict, cfg) -> (dict ms_name -> np.ndarray, list of skipped keys)
``tools/convert_model.py`` tries FORMATS in order and uses the first that matches.
"""
FORMATS = []  # filled by src/utils/convert/registry.py imports (see tools/convert_model.py)
