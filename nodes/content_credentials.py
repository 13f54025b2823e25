"""C2PA content credential nodes: sign a rendered video as AI-generated, and verify a file's credentials.
Thin: parse widgets, call engine/post/content_credentials."""

from __future__ import annotations

from ..engine.post import content_credentials

CATEGORY = "Reelsmith/Delivery"


class ReelsmithContentCredentials:
    DESCRIPTION = (
        "Signs a video file in place with C2PA content credentials that mark it as AI-generated "
        "(c2pa.created, trainedAlgorithmicMedia, software agent Reelsmith). Offline: no timestamp server is "
        "contacted. Needs an end-entity certificate chain and its private key (PEM). The file is replaced only "
        "once the signed copy is complete."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sign"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("path", "report")
    OUTPUT_TOOLTIPS = ("The signed file's path (the same file).", "Verification of the freshly signed file.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_path": ("STRING", {"default": "", "forceInput": True,
                                          "tooltip": "Path of the video to sign (MP4/MOV), e.g. the path output "
                                                     "of an encode node."}),
                "cert_chain_pem": ("STRING", {"default": "",
                                              "tooltip": "PEM file: the signing certificate first, then the CA "
                                                         "certificate(s) that issued it. It needs digitalSignature "
                                                         "key usage and emailProtection or documentSigning EKU."}),
                "private_key_pem": ("STRING", {"default": "", "tooltip": "PEM file with the signing certificate's "
                                                                         "private key (PKCS#8)."}),
                "algorithm": (list(content_credentials.SIGNING_ALGORITHMS), {
                    "default": "es256", "tooltip": "Signature algorithm; must match the key (es256 = EC P-256)."}),
                "title": ("STRING", {"default": "", "tooltip": "Title in the manifest; empty = the file name."}),
            }
        }

    def sign(self, video_path, cert_chain_pem, private_key_pem, algorithm, title):
        path = content_credentials.sign_file(video_path, cert_chain_pem, private_key_pem, algorithm,
                                             title=title or None)
        return (str(path), content_credentials.verify_file(path).text())


class ReelsmithContentCredentialsVerify:
    DESCRIPTION = (
        "Reads and checks the C2PA content credentials of a file: signature, hashes of the media and "
        "certificate chain; with trust anchors, also whether the signer is one you trust."
    )
    CATEGORY = CATEGORY
    FUNCTION = "verify"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "BOOLEAN", "BOOLEAN")
    RETURN_NAMES = ("report", "valid", "ai_generated")
    OUTPUT_TOOLTIPS = ("Validation state, manifest summary, errors and warnings.",
                       "True when the credentials are intact (and trusted, if trust anchors are given).",
                       "True when the manifest declares the content AI-generated.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_path": ("STRING", {"default": "", "tooltip": "Path of the file to check."}),
                "trust_anchors_pem": ("STRING", {"default": "", "tooltip": "Optional PEM file of root CA "
                                                                           "certificates you trust; empty = do not "
                                                                           "judge who signed."}),
            }
        }

    def verify(self, video_path, trust_anchors_pem):
        report = content_credentials.verify_file(video_path, trust_anchors_pem or None)
        return (report.text(), report.valid, report.ai_generated)


NODE_CLASS_MAPPINGS = {
    "ReelsmithContentCredentials": ReelsmithContentCredentials,
    "ReelsmithContentCredentialsVerify": ReelsmithContentCredentialsVerify,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReelsmithContentCredentials": "Reelsmith Content Credentials",
    "ReelsmithContentCredentialsVerify": "Reelsmith Content Credentials Verify",
}
