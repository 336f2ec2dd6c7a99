"""MVP-SEG (Guo et al., 2023): multi-view learned prompts over a frozen backbone (docs/MVP_SEG.md)."""

from .config import MVPConfig
from .model import MVPOutput, MVPSeg

__all__ = ["MVPConfig", "MVPOutput", "MVPSeg"]
