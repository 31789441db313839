"""Where photos come from and what is read off them: sources, the default download, image decoding,
the catalog and colours stages, the pixel cache."""
