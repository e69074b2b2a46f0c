"""The private aio-pika attributes `FailoverConnection` overrides still exist.

Were one renamed by an aio-pika release, the override would never be called and a part
would stay on a dead node's URL: this fails first (as the import-time check does).
"""

from __future__ import annotations

from aio_pika import RobustConnection

from infra.messaging.connect import HOOKED_ATTRIBUTES, FailoverConnection


def test_the_hooked_attributes_exist_on_aio_pikas_robust_connection() -> None:
    assert HOOKED_ATTRIBUTES == ("_RobustConnection__connect_transport", "_on_connection_close")
    for name in HOOKED_ATTRIBUTES:
        assert callable(getattr(RobustConnection, name, None)), name
        # The override is what a FailoverConnection's attempt looks up.
        assert getattr(FailoverConnection, name) is not getattr(RobustConnection, name), name
