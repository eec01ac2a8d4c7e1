class LeaflabError(Exception):
    """One project error: the message names the file/key/value and the fix."""
