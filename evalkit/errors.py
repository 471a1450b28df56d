"""The one error type a user sees: the CLI prints its message on one line and exits 2."""


class EvalkitError(Exception):
    """Bad input or an unusable environment, detected before anything is written."""
