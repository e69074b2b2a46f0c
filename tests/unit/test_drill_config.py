"""`make drill` does not rot: its modules import, its configuration renders and parses.

The drill itself (a 3-node cluster, haproxy, PgBouncer, nodes killed under load) takes
minutes and is run by hand (`make drill`), not by the suite.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from deploy.drill import run
from deploy.drill.cluster import (
    Cluster,
    Node,
    render_haproxy,
    render_node_config,
    render_pgbouncer,
)
from infra.db.preparation import reaches_postgres_directly


def test_every_node_lists_the_three_nodes_for_cluster_formation() -> None:
    text = render_node_config(["drill1@localhost", "drill2@localhost", "drill3@localhost"])
    assert "cluster_formation.peer_discovery_backend = classic_config" in text
    for i in (1, 2, 3):
        assert f"cluster_formation.classic_config.nodes.{i} = drill{i}@localhost" in text


def test_a_node_runs_on_its_own_ports_cookie_and_data(tmp_path: Path) -> None:
    node = Node(2, 41000, 41001, tmp_path / "node2")
    env = node.env()
    assert env["RABBITMQ_NODENAME"] == "drill2@localhost"
    assert env["RABBITMQ_NODE_PORT"] == "41000"
    assert env["RABBITMQ_DIST_PORT"] == "41001"
    assert env["HOME"] == str(tmp_path / "node2")  # the cookie
    for key in ("MNESIA_BASE", "LOG_BASE", "CONFIG_FILE", "CONF_ENV_FILE"):
        assert env[f"RABBITMQ_{key}"].startswith(str(tmp_path / "node2"))


def test_haproxy_config_is_valid(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy(45000, [45001, 45002, 45003]))
    assert "balance first" in config.read_text()
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install -y haproxy)")
    checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pgbouncer_config_pools_by_transaction(tmp_path: Path) -> None:
    parser = configparser.ConfigParser()
    parser.read_string(render_pgbouncer(46000, tmp_path, "127.0.0.1", 5432))
    assert parser["pgbouncer"]["pool_mode"] == "transaction"
    assert parser["pgbouncer"]["listen_port"] == "46000"
    assert parser["databases"]["*"] == "host=127.0.0.1 port=5432"


def test_prepare_writes_every_file_and_starts_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster")
    cluster.prepare()
    ports = {n.amqp_port for n in cluster.nodes} | {n.dist_port for n in cluster.nodes}
    assert len(ports) == 6
    assert 5672 not in ports
    for node in cluster.nodes:
        assert (node.home / ".erlang.cookie").stat().st_mode & 0o777 == 0o400
        assert not node.alive
    assert (tmp_path / "cluster" / "pgbouncer" / "pgbouncer.ini").exists()
    assert cluster.node_urls.count("amqp://") == 3


def test_the_drill_kills_three_different_nodes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c")
    cluster.prepare()
    n1, n2, n3 = (n.name for n in cluster.nodes)
    leaders, conns = Counter({n3: 15}), Counter({n1: 9})
    chosen = {
        role: run.choose(role, cluster, leaders, conns).name
        for role in ("follower", "connections", "leaders")
    }
    assert chosen == {"follower": n2, "connections": n1, "leaders": n3}


def test_a_stall_is_the_longest_stretch_with_no_checkout_finishing() -> None:
    phase = run.Phase("leaders", killed_at=100.0)
    times = [(95.0, 95.1), (99.0, 99.2), (100.5, 104.0), (101.0, 104.1), (104.0, 104.2)]
    run.measure(phase, times)
    assert phase.longest_gap_s == pytest.approx(4.0)
    assert phase.slowest_after_kill_s == pytest.approx(3.5)
    assert phase.typical_s == pytest.approx(0.2)


async def test_pgbouncer_starts_from_a_private_work_directory() -> None:
    """The drill's folder comes from mkdtemp (0700) and PgBouncer runs as `postgres`: it
    must still reach its files (it once stopped at 'Cannot open logfile')."""
    if shutil.which("pgbouncer") is None:
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    if os.geteuid() != 0:
        pytest.skip("the drill starts PgBouncer as postgres, which needs root")
    private = Path(tempfile.mkdtemp(prefix="checkout-drill-test-"))  # as the drill makes it
    cluster = Cluster(private / "cluster")
    cluster.prepare()
    try:
        await cluster.start_pooler()
        url = cluster.pgbouncer_url("postgres").replace("+psycopg", "")
        async with await psycopg.AsyncConnection.connect(url, prepare_threshold=None) as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
            # CHECKOUT_DATABASE_PREPARE=auto sees the pooler: nothing is prepared through it.
            direct, why = await reaches_postgres_directly(conn)
            assert not direct, why
    finally:
        cluster.stop()
        shutil.rmtree(private)
