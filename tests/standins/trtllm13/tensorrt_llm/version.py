"""The stand-in's version: 1.3.0, or `TRTFORGE_STANDIN_TRTLLM_VERSION` (tests that need another release)."""

import os

__version__ = os.environ.get("TRTFORGE_STANDIN_TRTLLM_VERSION", "1.3.0")
