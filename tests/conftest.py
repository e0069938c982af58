"""Shared test settings: hypothesis profiles from setup.cfg, thread limits."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import torch
from hypothesis import settings

_cfg = configparser.ConfigParser()
_cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
for _section in _cfg.sections():
    if _section.startswith("hypothesis:"):
        opts = {}
        for key, value in _cfg[_section].items():
            if value == "None":
                opts[key] = None
            elif value in ("true", "false"):
                opts[key] = value == "true"
            else:
                opts[key] = int(value)
        settings.register_profile(_section.split(":", 1)[1], **opts)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
