"""Getting image and video bytes from where a request points, under a policy, and decoding images.

Sources: `data:` URLs (base64), http(s) URLs, local paths and file:// URLs (pipeline only), PIL images and raw bytes.

http(s) fetching (MediaPolicy): the host must be one of `allowed_domains` (a listed domain or any subdomain of it;
"*" is any host; None allows every host, as `pipeline()` does; the server's default, an empty list, allows none).
Every address the host resolves to must be public (no loopback, private, link-local, multicast or reserved
address) unless `allow_private_addresses`. Redirects are followed by hand, at most `max_redirects`, each hop
checked again. Bodies are capped at `max_bytes`. The address check resolves the name just before each request;
a resolver that answers differently a moment later (DNS rebinding) is not defended against here: deploy behind
an egress proxy where that matters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit


class MediaError(ValueError):
    """An image or video that cannot be used: the message says which and why; `param` names the request field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class MediaPolicy:
    allowed_domains: tuple[str, ...] | None = ()  # hosts http(s) URLs may name; "*": any; None: any (pipeline)
    allow_private_addresses: bool = False  # let URLs reach loopback / private / link-local addresses
    allow_local_files: bool = False  # plain paths and file:// URLs (pipeline, never the server)
    max_bytes: int = 64 << 20  # per fetched media item
    timeout_s: float = 30.0
    max_redirects: int = 5


PIPELINE_POLICY = MediaPolicy(allowed_domains=None, allow_private_addresses=True, allow_local_files=True)


def _short(url: str, limit: int = 80) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


def parse_data_url(url: str, kind: str) -> bytes:
    """The bytes of a `data:[<mime>][;base64],<data>` URL; the mime type, when given, must be `kind`/*."""
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise MediaError(f"malformed data URL for the {kind}: no ',' before its data")
    params = head.split(";")
    mime = params[0].strip().lower()
    if mime and not mime.startswith(kind + "/") and mime != "application/octet-stream":
        raise MediaError(f"the data URL's media type {mime!r} is not an {kind} type ({kind}/...)")
    if "base64" in (p.strip().lower() for p in params[1:]):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"the {kind} data URL is not valid base64") from None
    return unquote(payload).encode("latin-1", errors="replace")


def host_allowed(host: str, allowed: tuple[str, ...] | None) -> bool:
    if allowed is None or "*" in allowed:
        return True
    host = host.lower().rstrip(".")
    for domain in allowed:
        domain = domain.lower().strip().lstrip("*").lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _check_url(url: str, policy: MediaPolicy) -> tuple[str, int]:
    """(host, port) of an http(s) URL the policy lets us fetch; MediaError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise MediaError(f"media URL scheme {parts.scheme!r} is not allowed (use https://, http:// or data:)")
    host = parts.hostname
    if not host:
        raise MediaError(f"media URL {_short(url)} has no host")
    if not host_allowed(host, policy.allowed_domains):
        hint = ("start the server with --allowed-media-domains listing it"
                if policy.allowed_domains == () else "it is not in --allowed-media-domains")  # fmt: skip
        raise MediaError(f"fetching media from {host} is not allowed: {hint}; or send the media as a data: URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise MediaError(f"media URL {_short(url)} has an invalid port") from None
    return host, port


def _check_addresses(host: str, infos: list[Any], policy: MediaPolicy) -> None:
    if policy.allow_private_addresses:
        return
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(_public(a) for a in addresses):
        raise MediaError(f"media host {host} resolves to a private, loopback or reserved address; not fetched")


async def _resolve(host: str, port: int, policy: MediaPolicy) -> None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise MediaError(f"cannot resolve media host {host}: {e}") from None
    _check_addresses(host, infos, policy)


async def fetch_url(url: str, policy: MediaPolicy) -> bytes:
    """The body of an http(s) URL, following the policy (see the module docstring)."""
    import httpx

    async with httpx.AsyncClient(follow_redirects=False, timeout=policy.timeout_s, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            host, port = _check_url(url, policy)
            await _resolve(host, port, policy)
            try:
                async with client.stream("GET", url) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise MediaError(f"fetching {_short(url)} answered HTTP {resp.status_code}")
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > policy.max_bytes:
                            raise MediaError(f"the media at {_short(url)} is larger than {policy.max_bytes} bytes")
                    return bytes(body)
            except httpx.HTTPError as e:
                raise MediaError(f"cannot fetch {_short(url)}: {type(e).__name__}: {e}") from None
    raise MediaError(f"fetching {_short(url)} redirected more than {policy.max_redirects} times")


def _local_path(source: str) -> Path | None:
    if source.startswith("file://"):
        return Path(unquote(urlsplit(source).path))
    if "://" not in source and not source.startswith("data:"):
        return Path(source).expanduser()
    return None


async def load_bytes(source: str, policy: MediaPolicy, kind: str) -> bytes:
    """Bytes of a media reference string: data URL, http(s) URL or (pipeline only) a local path."""
    if source.startswith("data:"):
        return parse_data_url(source, kind)
    path = _local_path(source)
    if path is not None:
        if not policy.allow_local_files:
            raise MediaError(f"{kind} URL {_short(source)} is not a data: or http(s): URL (local files are not read)")
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as e:
            raise MediaError(f"cannot read {kind} file {path}: {e.strerror or e}") from None
    return await fetch_url(source, policy)


def decode_image(data: bytes) -> Any:
    """An RGB PIL image from encoded bytes (PNG, JPEG, WebP, GIF first frame...); MediaError if they are not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(f"the image cannot be decoded: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise MediaError(f"the image data is corrupt or truncated: {e}") from None
    return to_rgb(image)


def to_rgb(image: Any) -> Any:
    if image.width < 1 or image.height < 1:
        raise MediaError(f"the image is empty ({image.width}x{image.height})")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(image: Any) -> Any:
    """LMDeploy's `load_image`: a PIL RGB image from a URL (http(s), data:), a local path or a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, bytes | bytearray):
        return decode_image(bytes(image))
    if not isinstance(image, str | Path):
        raise MediaError(f"cannot load an image from a {type(image).__name__}")
    source = str(image)
    if source.startswith(("http://", "https://")):
        import httpx

        try:
            resp = httpx.get(source, follow_redirects=True, timeout=PIPELINE_POLICY.timeout_s)
            resp.raise_for_status()
        except httpx.HTTPError as e:
            raise MediaError(f"cannot fetch {_short(source)}: {e}") from None
        return decode_image(resp.content)
    if source.startswith("data:"):
        return decode_image(parse_data_url(source, "image"))
    path = _local_path(source)
    try:
        return decode_image(path.read_bytes() if path is not None else b"")
    except OSError as e:
        raise MediaError(f"cannot read image file {path}: {e.strerror or e}") from None
