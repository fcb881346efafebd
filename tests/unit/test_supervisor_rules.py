"""The supervisor's two small rules: restart delays and each worker's share of the pool."""

from __future__ import annotations

from keyturn.server.supervisor import RESTART_MAX_SECONDS, pool_share, restart_delay


def test_restart_delay_doubles_with_each_quick_death_up_to_the_maximum() -> None:
    assert [restart_delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert restart_delay(50) == RESTART_MAX_SECONDS
    assert restart_delay(0) == 0.5


def test_the_pool_is_shared_out_with_two_connections_at_least() -> None:
    assert pool_share(10, 1) == 10
    assert pool_share(10, 2) == 5
    assert pool_share(10, 3) == 4  # rounded up: never fewer connections than asked for
    assert pool_share(10, 16) == 2
