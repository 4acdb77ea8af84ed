"""One training engine for the local, global and highres stages (`engine.fit`; exit statuses in `signals`)."""
