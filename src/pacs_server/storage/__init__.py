"""The file archive: where instances live on disk and how they get there safely."""
