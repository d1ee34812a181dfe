"""gxnor's Hydra configs (installed as gxnor_cli/conf so they work from any cwd)."""
