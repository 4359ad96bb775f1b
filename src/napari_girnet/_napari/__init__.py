"""napari front end of napari-girnet: reader, writers, sample data, layer conversions, widgets.

Only this subpackage imports napari or Qt. Importing it has no side effects; napari loads the
modules named in ``napari.yaml`` on demand.
"""
