"""Small shared utilities (device resolution, file hashes, atomic writes, text reads, progress counting)."""
