"""One training engine for the local, global and highres stages (`engine.run_train`; exit statuses in `signals`)."""
