"""Checkpoints and logging."""

from wpl_nas.tracking.checkpoint import (
    capture_rng,
    load_checkpoint,
    read_json,
    restore_rng,
    save_checkpoint,
    write_text_atomically,
)

__all__ = ["capture_rng", "load_checkpoint", "read_json", "restore_rng", "save_checkpoint", "write_text_atomically"]
