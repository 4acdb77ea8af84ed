"""Acquisition: everything that comes over the network, through one HTTP client.

http (retries, `.part` files, resume where the server allows, checksums, Ctrl-C), archive (safe zip
extraction), tcia (LIDC-IDRI via NBIA, `.tcia` manifests, per-image MD5), zenodo (RAD-ChestCT,
restricted access by token or share link), weights (MedicalNet), stage (the `prdit download` and
`prdit fetch-weights` stage functions).
"""
