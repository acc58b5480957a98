"""Exceptions with messages that name the file and the fix."""


class MissingFileError(FileNotFoundError):
    """A file the user must bring (BFM, weights) or an input file is absent."""


class ModelFileError(ValueError):
    """A file exists but is corrupt, truncated or has the wrong layout."""
