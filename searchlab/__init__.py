"""searchlab: Ray Tune sweeps for image data-augmentation research."""

__version__ = "0.1.0"
