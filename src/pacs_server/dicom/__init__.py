"""The DIMSE front-end: the only package that imports pynetdicom."""
