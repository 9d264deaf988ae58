"""Versioned, verifiable bundles: build, verify, safely extract, sign. See docs/bundle.md.

Importing this package is cheap and needs only the standard library: it ships to GPU hosts
(as code/moola_core/bundle/) where `archive` is used without pydantic. Building, verifying and
the manifest schema load pydantic (and torch, for builds): import them from their modules,
`moola_core.bundle.build.build_bundle`, `moola_core.bundle.verify.verify_bundle`,
`moola_core.bundle.manifest.Manifest`.
"""

from moola_core.agent.archive import BundleError, safe_extract, validate_version

__all__ = ["BundleError", "safe_extract", "validate_version"]
