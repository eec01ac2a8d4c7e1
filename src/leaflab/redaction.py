"""Credentials out of whatever leaflab prints: `redact(text)` masks every password written into a URI
(`scheme://user:password@host`) and the value of every secret-looking query parameter (`?password=…`,
`&X-Amz-Signature=…`, `token=`, `key=`, …) with ***, leaving the rest of the text as it was.

Tracking URIs may carry a database password (`postgresql://user:pw@db/mlflow` as MLFLOW_TRACKING_URI) or a
presigned S3 URL; leaflab shows such URIs in messages and tables, always through here.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@  (the password may hold ':' but no '/', '@' or whitespace: URIs percent-encode those)
_URI_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*):[^\s/@]*@")
# ?name=value / &name=value / ;name=value where the name holds a secret-looking word
_SECRET_PARAMETER = re.compile(r"(?P<head>[?&;][\w.\-]*(?:password|passwd|pwd|secret|token|signature|credential|key)"
                               r"[\w.\-]*=)[^&;#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URI passwords and secret query values replaced by ***.

    >>> redact("postgresql+psycopg2://leaflab:s3cr3t@db:5432/mlflow")
    'postgresql+psycopg2://leaflab:***@db:5432/mlflow'
    >>> redact("https://bucket.s3.amazonaws.com/m.pt?X-Amz-Credential=AKIA&X-Amz-Signature=ab12&v=1")
    'https://bucket.s3.amazonaws.com/m.pt?X-Amz-Credential=***&X-Amz-Signature=***&v=1'
    """
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _SECRET_PARAMETER.sub(lambda m: m["head"] + MASK, text)
