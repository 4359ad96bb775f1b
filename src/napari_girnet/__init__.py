"""napari-girnet: GIRNet registration, lesion segmentation and inpainting of brain MRI."""

__version__ = "0.1.0"
