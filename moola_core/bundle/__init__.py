"""Versioned, verifiable bundles: build, verify, safely extract, sign. See docs/bundle.md.

Importing this package is cheap and needs only the standard library: it ships to GPU hosts
(as code/moola_core/bundle/) where `archive` is used without pydantic. `build_bundle`,
`verify_bundle` and `Manifest` load pydantic (and torch, for builds) on first use.
"""

from moola_core.bundle.archive import BundleError, safe_extract, validate_version

__all__ = [
    "BundleError",
    "Manifest",
    "build_bundle",
    "safe_extract",
    "validate_version",
    "verify_bundle",
]


def __getattr__(name: str):
    # lazy: hosts import this package without pydantic installed
    if name == "build_bundle":
        from moola_core.bundle.build import build_bundle

        return build_bundle
    if name == "verify_bundle":
        from moola_core.bundle.verify import verify_bundle

        return verify_bundle
    if name == "Manifest":
        from moola_core.bundle.manifest import Manifest

        return Manifest
    raise AttributeError(f"module 'moola_core.bundle' has no attribute {name!r}")
