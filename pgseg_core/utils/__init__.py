"""Small shared utilities (device resolution, atomic writes, seeding)."""
