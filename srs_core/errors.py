"""One small error hierarchy: every message says where the problem is and what to do."""


class SrsError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SrsError):
    """A configuration file, key or value is invalid."""


class StoreError(SrsError):
    """An object-store operation failed."""


class StoreNotFound(StoreError):
    """The bucket, object or local path does not exist."""


class DiskFullError(StoreError):
    """A write ran out of space (ENOSPC, EDQUOT, EFBIG, a short write); the message names the
    file and the free space, and the previous version of the file is unchanged."""


class StoreAuthError(StoreError):
    """The object store refused the credentials (the secret itself is never printed)."""


class DataError(SrsError):
    """Input data is malformed; the message names the file, line or object."""


class JobError(SrsError):
    """A training job (PyTorchJob or local torchrun) failed or could not be managed."""
