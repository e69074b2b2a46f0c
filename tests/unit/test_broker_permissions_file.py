"""The broker users: the committed files equal the generator's output, compose uses them,
and the permissions mean what docs/broker-users.md says (RabbitMQ matches each regex
against a resource name with an unanchored search, as `re.search` does)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from infra.messaging.permissions import (
    CONSUMER_PARTS,
    PARTS,
    BrokerUser,
    broker_users,
    main,
    passwords_from_env,
    render_definitions,
    render_rabbitmqctl,
    render_table,
)
from infra.messaging.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"
COMPOSE = ROOT / "compose.yaml"
DOC = ROOT / "docs" / "broker-users.md"
REGENERATE = (
    "python -m infra.messaging.permissions --namespace checkout --format definitions "
    "--dev-passwords > deploy/rabbitmq/definitions.json"
)
# compose service -> the part whose user it connects as
SERVICE_PART = {
    "broker-setup": "setup",
    "api": "api",
    "relay": "relay",
    "saga": "saga",
    "consumer-invoice": "invoice",
    "consumer-email": "email",
    "consumer-production": "production",
    "operator": "operator",
}
WITHOUT_BROKER = ("postgres", "rabbitmq", "migrate", "mocks")


def users(namespace: str = "checkout", *, parts_declare: bool = True) -> dict[str, BrokerUser]:
    return {u.part: u for u in broker_users(namespace, parts_declare=parts_declare)}


def allowed(user: BrokerUser, access: str, resource: str) -> bool:
    return re.search(getattr(user.permissions, access), resource) is not None


def compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def every_declared_name(namespace: str) -> list[str]:
    """Every exchange and queue `declare_topology` declares (with the default delays)."""
    topology = Topology(namespace, (1000, 4000, 12000, 30000))
    names = [topology.orders_exchange, topology.internal_exchange, topology.event_log]
    for queue in topology.queues.values():
        names += [queue.name, queue.dlq]
        names += [queue.wait_queue(n) for n in range(1, queue.max_attempts)]
    return names


# ------------------------------------------------------------------ the committed files


def test_committed_definitions_are_what_the_generator_produces() -> None:
    expected = render_definitions(list(users().values()))
    assert DEFINITIONS.read_text() == expected, f"regenerate it: {REGENERATE}"


def test_the_entry_point_prints_the_committed_definitions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--namespace", "checkout", "--format", "definitions", "--dev-passwords"]
    assert main(argv) == 0
    assert capsys.readouterr().out == DEFINITIONS.read_text()


def test_committed_hashes_are_of_the_development_passwords() -> None:
    document = json.loads(DEFINITIONS.read_text())
    assert [u["name"] for u in document["users"]] == [f"checkout-{p}" for p in PARTS]
    for entry in document["users"]:
        raw = base64.b64decode(entry["password_hash"])
        salt, digest = raw[:4], raw[4:]
        assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert hashlib.sha256(salt + entry["name"].encode()).digest() == digest
    assert document["vhosts"] == [{"name": "/"}]
    assert {p["vhost"] for p in document["permissions"]} == {"/"}


def test_real_passwords_get_a_random_salt_and_come_from_the_environment() -> None:
    generated = list(users().values())
    environ = {u.password_env: f"secret-{u.part}" for u in generated}
    passwords = passwords_from_env(generated, environ)
    first = json.loads(render_definitions(generated, passwords))
    second = json.loads(render_definitions(generated, passwords))
    for a, b in zip(first["users"], second["users"], strict=True):
        assert a["password_hash"] != b["password_hash"]  # salted afresh each time
        raw = base64.b64decode(a["password_hash"])
        part = a["name"].removeprefix("checkout-")
        assert hashlib.sha256(raw[:4] + f"secret-{part}".encode()).digest() == raw[4:]
    with pytest.raises(KeyError, match="CHECKOUT_RABBIT_PASSWORD_SETUP"):
        passwords_from_env(generated, {k: v for k, v in environ.items() if "SETUP" not in k})


def test_definitions_need_passwords_unless_asked_for_the_development_ones(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for part in PARTS:
        monkeypatch.delenv(f"CHECKOUT_RABBIT_PASSWORD_{part.upper()}", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["--format", "definitions"])
    assert exited.value.code == 2
    assert "CHECKOUT_RABBIT_PASSWORD_API" in capsys.readouterr().err


def test_the_rabbitmqctl_script_is_valid_sh_and_holds_no_password() -> None:
    script = render_rabbitmqctl(list(users().values()))
    sh = shutil.which("sh")
    assert sh is not None
    checked = subprocess.run([sh, "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    for user in users().values():
        assert f'"${user.password_env}" | rabbitmqctl -q add_user {user.name}\n' in script
        assert f'"${user.password_env}" | rabbitmqctl -q change_password {user.name}\n' in script
    # rabbitmqctl reads each password from its stdin: never one on a command line
    assert re.findall(r"rabbitmqctl -q (?:add_user|change_password) \S+ \S", script) == []


def test_the_doc_shows_the_generated_tables() -> None:
    doc = DOC.read_text()
    assert render_table(list(users().values())) in doc
    assert render_table(list(users(parts_declare=False).values())) in doc


# --------------------------------------------------------------------------- compose


def test_compose_is_valid_yaml_and_each_part_connects_as_its_own_user() -> None:
    services = compose()
    expected = users()
    for service, part in SERVICE_PART.items():
        environment = services[service]["environment"]
        assert isinstance(environment, dict)
        url = urlsplit(environment["CHECKOUT_RABBIT_URL"])
        assert (url.username, url.password) == (expected[part].name, expected[part].dev_password)
        assert (url.hostname, url.port) == ("rabbitmq", 5672)
    for service in WITHOUT_BROKER:  # no broker credentials where none are needed
        environment = services[service].get("environment") or {}
        assert isinstance(environment, dict)
        assert "CHECKOUT_RABBIT_URL" not in environment
    assert set(services) == set(SERVICE_PART) | set(WITHOUT_BROKER)


def test_compose_broker_loads_the_generated_definitions_and_no_default_user() -> None:
    rabbitmq = compose()["rabbitmq"]
    assert "environment" not in rabbitmq  # no RABBITMQ_DEFAULT_USER: no administrator
    mounts = {
        source: target.removesuffix(":ro")
        for source, target in (str(v).split(":", 1) for v in rabbitmq["volumes"])  # type: ignore[attr-defined]
    }
    assert mounts["./deploy/rabbitmq/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    definitions_at = mounts["./deploy/rabbitmq/definitions.json"]
    conf = {
        key.strip(): value.strip()
        for key, value in (
            line.split("=", 1)
            for line in RABBITMQ_CONF.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
    }
    assert conf == {"load_definitions": definitions_at}


def test_compose_parts_start_after_the_setup_user_declared_the_topology() -> None:
    services = compose()
    setup = services["broker-setup"]
    assert setup["restart"] == "no"
    assert setup["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    for service in ("api", "relay", "saga", "consumer-invoice", "consumer-email", "operator"):
        depends = services[service]["depends_on"]
        assert isinstance(depends, dict)
        assert depends["broker-setup"] == {"condition": "service_completed_successfully"}


# ------------------------------------------------------------------ what the rights mean

NS = "checkout"
ORDERS, INTERNAL, DEFAULT = f"{NS}.orders", f"{NS}.internal", "amq.default"


@pytest.mark.parametrize("part", CONSUMER_PARTS)
def test_a_consumer_publishes_only_through_the_default_exchange_and_reads_only_its_queue(
    part: str,
) -> None:
    user = users()[part]
    assert not allowed(user, "write", ORDERS)
    assert not allowed(user, "write", INTERNAL)
    assert allowed(user, "write", DEFAULT)  # retry and dead-letter copies
    assert allowed(user, "read", f"{NS}.{part}")
    others = [q for q in ("payment", *CONSUMER_PARTS) if q != part]
    for queue in others:
        assert not allowed(user, "read", f"{NS}.{queue}")
    assert not allowed(user, "read", f"{NS}.{part}.dlq")  # the operator's


def test_relay_saga_api_and_operator() -> None:
    u = users()
    assert allowed(u["relay"], "write", ORDERS)
    assert allowed(u["relay"], "write", INTERNAL)
    assert not allowed(u["relay"], "write", DEFAULT)
    assert not allowed(u["relay"], "read", f"{NS}.payment")
    assert allowed(u["saga"], "write", DEFAULT)
    # Its events and commands go through the outbox; its outcomes into the database.
    assert not allowed(u["saga"], "write", ORDERS)
    assert not allowed(u["saga"], "write", INTERNAL)
    assert allowed(u["saga"], "read", f"{NS}.payment")
    assert not allowed(u["saga"], "read", f"{NS}.email")
    for name in [DEFAULT, *every_declared_name(NS)]:
        for access in ("configure", "write", "read"):
            assert not allowed(u["api"], access, name)
        assert not allowed(u["operator"], "configure", name)
    operator = u["operator"]
    for queue in ("payment", *CONSUMER_PARTS):
        assert allowed(operator, "read", f"{NS}.{queue}.dlq")
        assert not allowed(operator, "read", f"{NS}.{queue}")
    assert allowed(operator, "write", DEFAULT)
    assert not allowed(operator, "write", ORDERS)
    assert operator.tags == ("management",)


def test_what_declares_the_topology_may_configure_it_and_nothing_outside_the_namespace() -> None:
    u = users()
    for part in ("relay", "saga", *CONSUMER_PARTS, "setup"):
        for name in every_declared_name(NS):
            assert allowed(u[part], "configure", name), (part, name)
        for outside in (
            DEFAULT,
            "amq.topic",
            "checkout2.orders",
            "checkout.eu.orders",
            "billing-team.order-paid",
            "checkout.email.other",
        ):
            assert not allowed(u[part], "configure", outside), (part, outside)
    setup = u["setup"]
    topology = Topology(NS, (1000, 4000))
    for queue in topology.queues.values():  # created with a dead-letter exchange
        assert allowed(setup, "read", queue.name)
        assert allowed(setup, "read", queue.wait_queue(1))
    assert allowed(setup, "write", DEFAULT)


def test_without_declaring_the_parts_configure_nothing() -> None:
    strict = users(parts_declare=False)
    for part in ("api", "relay", "saga", *CONSUMER_PARTS, "operator"):
        for name in every_declared_name(NS):
            assert not allowed(strict[part], "configure", name)
    assert strict["email"].permissions.write == r"^amq\.default$"
    assert strict["email"].permissions.read == r"^checkout\.email$"
    assert strict["relay"].permissions.write == r"^checkout\.(orders|internal)$"
    assert strict["setup"] == users()["setup"]


def test_namespaces_are_escaped_and_user_names_carry_them() -> None:
    u = users("test_ab.c-1")
    assert u["email"].name == "test_ab.c-1-email"
    assert allowed(u["email"], "read", "test_ab.c-1.email")
    assert not allowed(u["email"], "read", "test_abxc-1.email")
