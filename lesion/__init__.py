"""lesion: skin-cancer screening from photos."""
