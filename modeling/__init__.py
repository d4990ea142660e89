"""vistok models, configs and the blocks they share. Submodules are imported on use; the registration with
transformers' Auto classes lives in `vistok.registry`."""
