"""Use cases over the archive and the index; they know nothing about pynetdicom."""
