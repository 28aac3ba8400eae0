"""semseg: semantic segmentation networks, datasets and one training loop.

Importing the package has no side effects; models and datasets register when
``semseg.models`` / ``semseg.loaders`` are imported.
"""

__version__ = "0.1.0"
