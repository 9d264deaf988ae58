"""What a person reads when the allowed_signers file they named is not there."""

from __future__ import annotations

import pytest

from moola_core.bundle.signing import verify_signature
from moola_core.errors import MoolaError


def test_a_missing_allowed_signers_file_names_the_flag(tmp_path):
    # `invoke bundle.verify --allowed-signers typo` pointed at the inventory, which has no such field
    with pytest.raises(MoolaError, match="check the path given to --allowed-signers"):
        verify_signature(b"{}", b"sig", tmp_path / "typo")
