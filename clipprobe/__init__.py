"""clipprobe: measure social stereotypes in CLIP-style vision-language models."""

__version__ = "0.1.0"
