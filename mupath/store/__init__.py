"""The system store: a SQLite manifest plus write-once, content-addressed safetensors blobs."""
from mupath.store.blobs import BlobStore, atomic_write_bytes
from mupath.store.manifest import FORMAT_VERSION, Manifest

__all__ = ["BlobStore", "atomic_write_bytes", "Manifest", "FORMAT_VERSION"]
