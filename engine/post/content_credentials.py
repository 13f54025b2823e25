"""C2PA content credentials: sign a rendered file with a manifest that says it is AI-generated, and verify one.

Uses `c2pa-python` (the C2PA reference SDK). Signing is offline: no timestamp authority is contacted (the
signature then carries the signing time only as claimed by the signer; a certificate must still be valid
when the file is verified). The manifest holds a `c2pa.actions.v2` assertion with one `c2pa.created` action,
digitalSourceType trainedAlgorithmicMedia and software agent Reelsmith.

The signing certificate must be an end-entity certificate (not a CA) with the digitalSignature key usage and
an extended key usage C2PA accepts (emailProtection, documentSigning 1.3.6.1.5.5.7.3.36, or the C2PA
claim-signing EKU 1.3.6.1.4.1.62558.2.1), followed in the chain file by its issuing CA certificate(s). A
self-signed certificate is refused by the SDK.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from dataclasses import dataclass, field

from ..errors import InvalidInputError, ReelsmithError

AI_GENERATED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SOFTWARE_AGENT = "Reelsmith"
SIGNING_ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
_MIME = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
         ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class ContentCredentialsError(ReelsmithError, RuntimeError):
    """Signing or reading content credentials failed (bad certificate, key, or unsupported file)."""


@dataclass
class Report:
    valid: bool
    state: str                                 # the SDK's validation state: Valid, Trusted, Invalid, or "none"
    summary: dict = field(default_factory=dict)  # active manifest: title, generator, signer, actions
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ai_generated(self) -> bool:
        return any(a.get("action") == "c2pa.created" and a.get("digitalSourceType") == AI_GENERATED
                   for a in self.summary.get("actions", []))

    def text(self) -> str:
        head = f"content credentials: {'VALID' if self.valid else 'NOT VALID'} ({self.state})"
        lines = [head]
        if self.summary:
            lines.append(json.dumps(self.summary, indent=2))
        lines += [f"error: {e}" for e in self.errors] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _c2pa():
    try:
        import c2pa
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ContentCredentialsError(
            "Content credentials need the 'c2pa-python' package: pip install c2pa-python "
            "(in ComfyUI's Python environment), then restart ComfyUI.") from e
    return c2pa


def _read_pem(path, what: str) -> str:
    p = pathlib.Path(str(path)).expanduser()
    if not str(path).strip():
        raise InvalidInputError(f"No {what} file given: set the path of a PEM file.")
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise InvalidInputError(f"The {what} file {p} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"The {what} file {p} cannot be read as a PEM text file ({e}).") from None
    if "-----BEGIN" not in text:
        raise InvalidInputError(f"The {what} file {p} is not PEM (no '-----BEGIN' line): convert it with openssl "
                                "to PEM.")
    return text


def _media_file(path) -> pathlib.Path:
    p = pathlib.Path(str(path)).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"The file to sign or verify, {p}, does not exist.")
    if p.suffix.lower() not in _MIME:
        raise InvalidInputError(f"{p.name}: content credentials support {', '.join(sorted(_MIME))} files here.")
    return p


def manifest_definition(title: str, software_version: str = "", extra_assertions: list[dict] | None = None) -> dict:
    agent = {"name": SOFTWARE_AGENT}
    if software_version:
        agent["version"] = software_version
    return {
        "claim_generator_info": [dict(agent)],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions.v2",
             "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": AI_GENERATED,
                                   "softwareAgent": dict(agent)}]}},
            *(extra_assertions or []),
        ],
    }


def sign_file(path, cert_chain_pem_path, private_key_pem_path, algorithm: str = "es256",
              title: str | None = None, software_version: str = "") -> pathlib.Path:
    """Add an AI-generated C2PA manifest to `path`, in place.

    The signed file is written next to the original and moved over it only when complete, so a failure
    never leaves a half-written file. Returns the path.
    """
    media = _media_file(path)
    chain = _read_pem(cert_chain_pem_path, "certificate chain")
    key = _read_pem(private_key_pem_path, "private key")
    if "CERTIFICATE" not in chain:
        raise InvalidInputError(f"The certificate chain file {cert_chain_pem_path} holds no CERTIFICATE block.")
    if "PRIVATE KEY" not in key:
        raise InvalidInputError(f"The private key file {private_key_pem_path} holds no PRIVATE KEY block.")
    if algorithm not in SIGNING_ALGORITHMS:
        raise InvalidInputError(f"Unknown signing algorithm {algorithm!r}; use one of {', '.join(SIGNING_ALGORITHMS)}.")
    c2pa = _c2pa()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(algorithm, chain.encode(), key.encode(), None))  # None: no TSA
    except c2pa.C2paError as e:
        raise ContentCredentialsError(
            f"The certificate chain {cert_chain_pem_path} and key {private_key_pem_path} were refused for "
            f"{algorithm} signing: {e}. The key must match the first certificate and the algorithm "
            "(es256 = P-256 EC key).") from None
    definition = manifest_definition(title or media.name, software_version)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{media.stem}.", suffix=media.suffix, dir=media.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        with c2pa.Builder(definition) as builder, open(media, "rb") as src, open(tmp, "w+b") as dst:
            builder.sign(signer, _MIME[media.suffix.lower()], src, dst)
        os.replace(tmp, media)
    except c2pa.C2paError as e:
        raise ContentCredentialsError(
            f"Signing {media} failed: {e}. Check that the chain's first certificate is an end-entity certificate "
            "with digitalSignature key usage and an emailProtection or documentSigning extended key usage, "
            "issued by the CA that follows it in the chain file.") from None
    finally:
        tmp.unlink(missing_ok=True)
        signer.close()
    return media


def verify_file(path, trust_anchors_pem_path=None) -> Report:
    """Read and validate the C2PA manifest of `path`.

    Without trust anchors the signature, hashes and certificate chain are checked but the signer cannot be
    known to be trusted: the report is valid with a warning "signer not in a trust list". With
    `trust_anchors_pem_path` (PEM of the root CA(s) you trust) an untrusted signer makes it invalid.
    """
    media = _media_file(path)
    c2pa = _c2pa()
    context = None
    if trust_anchors_pem_path:
        anchors = _read_pem(trust_anchors_pem_path, "trust anchors")
        context = c2pa.Context.from_dict({"trust": {"trust_anchors": anchors}})
    try:
        with open(media, "rb") as stream:
            reader = c2pa.Reader.try_create(_MIME[media.suffix.lower()], stream, None, context)
            if reader is None:
                return Report(False, "none", errors=[f"{media.name} carries no content credentials."])
            with reader:
                state = reader.get_validation_state() or "unknown"
                results = reader.get_validation_results() or {}
                manifest = reader.get_active_manifest() or {}
    except c2pa.C2paError as e:
        return Report(False, "unreadable", errors=[f"content credentials of {media.name} cannot be read: {e}"])
    finally:
        if context is not None:
            context.close()
    failures = (results.get("activeManifest") or {}).get("failure", [])
    errors, warnings = [], []
    for failure in failures:
        message = f"{failure.get('code')}: {failure.get('explanation', '')}"
        if failure.get("code") == "signingCredential.untrusted" and not trust_anchors_pem_path:
            warnings.append("signer not in a trust list (give trust anchors to check who signed)")
        else:
            errors.append(message)
    valid = state in ("Valid", "Trusted") and not errors
    return Report(valid, state, _summary(manifest), errors, warnings)


def _summary(manifest: dict) -> dict:
    actions = []
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            actions += assertion.get("data", {}).get("actions", [])
    signature = manifest.get("signature_info", {})
    return {
        "title": manifest.get("title"),
        "claim_generator": [g.get("name") for g in manifest.get("claim_generator_info", [])],
        "signer": {"common_name": signature.get("common_name"), "issuer": signature.get("issuer"),
                   "alg": signature.get("alg")},
        "actions": [{k: a[k] for k in ("action", "digitalSourceType", "softwareAgent") if k in a} for a in actions],
    }
