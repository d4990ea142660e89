"""vistok image/video processors and pipelines. Submodules are imported on use; the registration with
transformers' Auto classes and pipelines lives in `vistok.registry`."""
