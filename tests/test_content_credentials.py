"""C2PA content credentials: sign a small MP4 with a CA made at test time, verify, tamper, bad keys."""

import datetime
import pathlib

import av
import numpy as np
import pytest
from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.post import content_credentials as cc
from reelsmith.nodes.content_credentials import (
    ReelsmithContentCredentials,
    ReelsmithContentCredentialsVerify,
)

c2pa = pytest.importorskip("c2pa", reason="c2pa-python is not installed: pip install c2pa-python")
pytest.importorskip("cryptography", reason="the test CA is made with 'cryptography': pip install cryptography")

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Reelsmith Test")])


def _key_usage(**on):
    flags = {name: False for name in ("digital_signature", "content_commitment", "key_encipherment",
                                      "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                                      "encipher_only", "decipher_only")}
    flags.update(on)
    return x509.KeyUsage(**flags)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    """A private CA and a C2PA-acceptable leaf: end entity (CA:false), digitalSignature key usage,
    emailProtection EKU, subject/authority key ids, issued by the CA (C2PA refuses self-signed signers)."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Reelsmith Test CA")).issuer_name(_name("Reelsmith Test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("Reelsmith Test Signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    other = ec.generate_private_key(ec.SECP256R1())
    (folder / "other_key.pem").write_bytes(other.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return folder


def make_mp4(path: pathlib.Path, frames: int = 8) -> pathlib.Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((64, 64, 3), i * 25, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_sign_and_verify_ai_generated(credentials, tmp_path):
    video = make_mp4(tmp_path / "clip.mp4")
    original = video.read_bytes()
    out = cc.sign_file(video, credentials / "chain.pem", credentials / "key.pem")
    assert out == video and video.read_bytes() != original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp file left behind
    report = cc.verify_file(video, credentials / "ca.pem")
    assert report.valid and report.state == "Trusted" and not report.errors, report.text()
    assert report.ai_generated
    action = report.summary["actions"][0]
    assert action["action"] == "c2pa.created" and action["softwareAgent"]["name"] == "Reelsmith"
    assert action["digitalSourceType"] == "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    assert report.summary["signer"]["common_name"] == "Reelsmith Test Signer"
    # without trust anchors: intact, but the signer is only a warning
    untrusted = cc.verify_file(video)
    assert untrusted.valid and untrusted.warnings and not untrusted.errors
    # still a playable video
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8


def test_tampered_media_fails_verification(credentials, tmp_path):
    video = make_mp4(tmp_path / "clip.mp4")
    cc.sign_file(video, credentials / "chain.pem", credentials / "key.pem")
    data = bytearray(video.read_bytes())
    mdat = data.find(b"mdat")
    assert mdat > 0
    data[mdat + 40] ^= 0xFF
    video.write_bytes(bytes(data))
    report = cc.verify_file(video, credentials / "ca.pem")
    assert not report.valid and any("mismatch" in e for e in report.errors), report.text()


def test_unsigned_file_is_reported_not_valid(tmp_path):
    report = cc.verify_file(make_mp4(tmp_path / "plain.mp4"))
    assert not report.valid and "no content credentials" in report.errors[0]


def test_unreadable_or_wrong_key_is_a_clear_error(credentials, tmp_path):
    video = make_mp4(tmp_path / "clip.mp4")
    original = video.read_bytes()
    with pytest.raises(InvalidInputError, match="missing_key.pem.*does not exist"):
        cc.sign_file(video, credentials / "chain.pem", tmp_path / "missing_key.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\xff not a key")
    with pytest.raises(InvalidInputError, match="garbage.pem"):
        cc.sign_file(video, credentials / "chain.pem", garbage)
    with pytest.raises(InvalidInputError, match="certificate chain.*missing_chain.pem"):
        cc.sign_file(video, tmp_path / "missing_chain.pem", credentials / "key.pem")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(cc.ContentCredentialsError, match="broken.pem"):
        cc.sign_file(video, credentials / "chain.pem", broken)
    with pytest.raises(cc.ContentCredentialsError):
        cc.sign_file(video, credentials / "chain.pem", credentials / "other_key.pem")
    assert video.read_bytes() == original  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pem", "clip.mp4", "garbage.pem"]


def test_nodes_sign_and_verify(credentials, tmp_path):
    video = make_mp4(tmp_path / "clip.mp4")
    path, report = ReelsmithContentCredentials().sign(str(video), str(credentials / "chain.pem"),
                                                      str(credentials / "key.pem"), "es256", "")
    assert path == str(video) and "VALID" in report
    report, valid, ai = ReelsmithContentCredentialsVerify().verify(path, str(credentials / "ca.pem"))
    assert valid and ai and "Trusted" in report
