"""The napari plugin: reader, writers and sample data (the dock widgets build on these)."""
