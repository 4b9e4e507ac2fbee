"""Who may use the local cloud's endpoint: a WSGI middleware around moto's server app.

moto accepts any credentials and answers cross-origin requests from any web origin, so anyone who can reach
the port (another local user, a web page open in a browser on this machine) could drive the emulator, and
through its ECS agent start processes. The guard refuses, before moto sees them:

- browser cross-origin requests: any request whose `Origin` is not the endpoint's own origin, and every CORS
  preflight (`OPTIONS` with `Access-Control-Request-Method`), with 403 and no `Access-Control-Allow-*` headers
  (the AWS CLI and the SDKs never send `Origin`);
- requests not signed with the local cloud's credentials: the AWS Signature Version 4 of the `Authorization`
  header (or of a presigned URL's `X-Amz-*` query parameters) is recomputed with the secret access key and
  must match, with an AWS-shaped 403 (`InvalidClientTokenId` for another access key id or no signature,
  `SignatureDoesNotMatch` for a wrong signature).

A signed request is accepted within 15 minutes of its `X-Amz-Date` (`RequestTimeTooSkewed` otherwise), a
presigned URL until it expires. The payload hash is taken from `X-Amz-Content-SHA256` when the client sends
one (S3), as AWS does; the body itself is then not re-hashed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,\s]+)")
_SIGNATURE = re.compile(r"Signature=([0-9a-f]+)")
MAX_SKEW = timedelta(minutes=15)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Guard:
    """WSGI middleware: `Guard(app, own_origins, credentials)`."""

    def __init__(self, app: Callable, own_origins: Iterable[str], credentials: Credentials) -> None:
        self.app = app
        self.own_origins = frozenset(own_origins)
        self.credentials = credentials

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")
        if environ.get("REQUEST_METHOD") == "OPTIONS" and environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"):
            return _refuse(
                environ, start_response, "AccessDenied", "the local cloud refuses CORS preflight requests"
            )
        if origin is not None and origin not in self.own_origins:
            return _refuse(
                environ,
                start_response,
                "AccessDenied",
                f"the local cloud refuses cross-origin requests (from {origin})",
            )
        try:
            body = _buffer_body(environ)
            check_signature(environ, body, self.credentials)
        except Refused as refused:
            return _refuse(environ, start_response, refused.code, refused.message)
        return self.app(environ, start_response)


def check_signature(environ: dict[str, Any], body: bytes, credentials: Credentials) -> None:
    """Raise Refused unless the request is signed (SigV4) with `credentials`."""
    query = environ.get("QUERY_STRING", "")
    pairs = parse_qsl(query, keep_blank_values=True)
    params = dict(pairs)
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    if authorization.startswith("AWS4-HMAC-SHA256 "):
        credential = _CREDENTIAL.search(authorization)
        signed = _SIGNED_HEADERS.search(authorization)
        signature = _SIGNATURE.search(authorization)
        timestamp = environ.get("HTTP_X_AMZ_DATE", "")
        presigned = False
    elif params.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256":
        credential = _CREDENTIAL.search("Credential=" + params.get("X-Amz-Credential", ""))
        signed = _SIGNED_HEADERS.search("SignedHeaders=" + params.get("X-Amz-SignedHeaders", ""))
        signature = _SIGNATURE.search("Signature=" + params.get("X-Amz-Signature", ""))
        timestamp = params.get("X-Amz-Date", "")
        presigned = True
    elif "AWSAccessKeyId" in params and "Signature" in params and "Expires" in params:
        _check_presigned_v2(environ, params, credentials)
        return
    else:
        raise Refused(
            "InvalidClientTokenId",
            "the request is not signed with AWS Signature Version 4: "
            "use the credentials `spotfill local up` printed",
        )
    if credential is None or signed is None or signature is None or not timestamp:
        raise Refused("IncompleteSignature", "the request's Signature Version 4 is incomplete")
    if credential.group(1) != credentials.access_key_id:
        raise Refused(
            "InvalidClientTokenId",
            "the security token included in the request is invalid: "
            "use the access key id `spotfill local up` printed",
        )
    _check_time(timestamp, params.get("X-Amz-Expires") if presigned else None)
    _, day, region, service = credential.groups()
    if presigned:
        query_pairs = [(k, v) for k, v in _raw_pairs(query) if k != "X-Amz-Signature"]
        payload = "UNSIGNED-PAYLOAD"
    else:
        query_pairs = _raw_pairs(query)
        payload = environ.get("HTTP_X_AMZ_CONTENT_SHA256") or (
            hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
        )
    headers = []
    for name in signed.group(1).split(";"):
        value = _header(environ, name)
        headers.append(f"{name}:{' '.join(value.split())}")
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(query_pairs))
    raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/"))
    raw_path = raw_path.split("?", 1)[0] or "/"
    key = _signing_key(credentials.secret_access_key, day, region, service)
    scope = f"{day}/{region}/{service}/aws4_request"
    # Clients canonicalise the path their own way (S3 as sent, the other services encoded once more).
    for path in dict.fromkeys((raw_path, quote(raw_path, safe="/~"), quote(unquote(raw_path), safe="/~"))):
        canonical = "\n".join(
            [
                environ.get("REQUEST_METHOD", "GET").upper(),
                path,
                canonical_query,
                "\n".join(headers) + "\n",
                signed.group(1),
                payload,
            ]
        )
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", timestamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, signature.group(1)):
            return
    raise Refused(
        "SignatureDoesNotMatch",
        "the request signature we calculated does not match the signature you provided: "
        "use the secret access key `spotfill local up` printed",
    )


def _check_time(timestamp: str, expires: str | None) -> None:
    """A signed request is good for 15 minutes either side of now (AWS's allowed skew); a presigned URL until
    it expires."""
    try:
        signed_at = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        lifetime = timedelta(seconds=int(expires)) if expires is not None else None
    except ValueError:
        raise Refused(
            "IncompleteSignature", "the request's X-Amz-Date or X-Amz-Expires is malformed"
        ) from None
    now = datetime.now(UTC)
    if lifetime is not None:
        if not signed_at - MAX_SKEW <= now <= signed_at + lifetime:
            raise Refused("AccessDenied", "the presigned URL has expired")
    elif abs(now - signed_at) > MAX_SKEW:
        raise Refused(
            "RequestTimeTooSkewed",
            "the difference between the request time and the current time is too large",
        )


def _check_presigned_v2(environ: dict[str, Any], params: dict[str, str], credentials: Credentials) -> None:
    """An S3 URL presigned with Signature Version 2 (what `generate_presigned_url` makes by default)."""
    if params["AWSAccessKeyId"] != credentials.access_key_id:
        raise Refused("InvalidAccessKeyId", "the access key id is not the one `spotfill local up` printed")
    resource = (environ.get("RAW_URI") or environ.get("REQUEST_URI") or "/").split("?", 1)[0]
    subresources = sorted(
        (k, v)
        for k, v in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if k in _V2_SUBRESOURCES
    )
    if subresources:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subresources)
    method = environ.get("REQUEST_METHOD", "GET").upper()
    try:
        expires = int(params["Expires"])
    except ValueError:
        raise Refused("AccessDenied", "the presigned URL's Expires is not a number") from None
    if expires < time.time():
        raise Refused("AccessDenied", "the presigned URL has expired")
    md5, content_type = environ.get("HTTP_CONTENT_MD5", ""), environ.get("CONTENT_TYPE", "")
    amz = sorted(
        (k[5:].lower().replace("_", "-"), v) for k, v in environ.items() if k.startswith("HTTP_X_AMZ_")
    )
    headers = "".join(f"{k}:{v.strip()}\n" for k, v in amz)
    to_sign = f"{method}\n{md5}\n{content_type}\n{params['Expires']}\n{headers}{resource}"
    expected = base64.b64encode(
        hmac.new(credentials.secret_access_key.encode(), to_sign.encode(), hashlib.sha1).digest()
    )
    if not hmac.compare_digest(expected.decode(), params["Signature"]):
        raise Refused(
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided: "
            "use the secret access key `spotfill local up` printed",
        )


_V2_SUBRESOURCES = frozenset(
    [
        "acl",
        "cors",
        "delete",
        "lifecycle",
        "location",
        "logging",
        "notification",
        "partNumber",
        "policy",
        "requestPayment",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
        "response-content-type",
        "response-content-language",
        "response-expires",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
    ]
)


def _raw_pairs(query: str) -> list[tuple[str, str]]:
    """The query's pairs, each part re-encoded as SigV4 canonicalises it."""
    pairs = []
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return pairs


def _header(environ: dict[str, Any], name: str) -> str:
    lowered = name.lower()
    if lowered == "content-type":
        return str(environ.get("CONTENT_TYPE", ""))
    if lowered == "content-length":
        return str(environ.get("CONTENT_LENGTH", ""))
    return str(environ.get("HTTP_" + lowered.upper().replace("-", "_"), ""))


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _buffer_body(environ: dict[str, Any]) -> bytes:
    """Read the request body (to hash it) and put it back for moto."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    body = stream.read(length) if stream is not None and length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _refuse(environ: dict[str, Any], start_response: Callable, code: str, message: str) -> list[bytes]:
    if environ.get("HTTP_X_AMZ_TARGET") or "json" in environ.get("CONTENT_TYPE", ""):
        body = json.dumps({"__type": code, "message": message}).encode()
        start_response(
            "403 Forbidden",
            [
                ("Content-Type", "application/x-amz-json-1.0"),
                ("Content-Length", str(len(body))),
                ("x-amzn-ErrorType", code),
                ("x-amzn-query-error", f"{code};Sender"),
            ],
        )
        return [body]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
        f"<Message>{_xml(message)}</Message></Error><RequestId>0</RequestId></ErrorResponse>"
    ).encode()
    start_response(
        "403 Forbidden",
        [("Content-Type", "text/xml"), ("Content-Length", str(len(body))), ("x-amzn-ErrorType", code)],
    )
    return [body]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
