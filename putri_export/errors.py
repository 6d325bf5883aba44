"""User-facing errors: one clear line, no traceback."""


class PutriError(Exception):
    """Bad input or an impossible request; the CLI prints the message alone and exits 2."""
