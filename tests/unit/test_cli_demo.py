"""`checkout demo` against a fake API on httpx's MockTransport (and one closed port)."""

from __future__ import annotations

import json
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from infra.cli.demo import Tracked, main, render, run_demo, samples
from infra.cli.main import app
from infra.settings import Settings, load_settings

TOKEN = "ck_demo-test-key"


def _settings() -> Settings:
    return load_settings(api_key=TOKEN)


class FakeApi:
    """Just enough of the API: each GET of a checkout moves it one step on."""

    def __init__(self, ready: int = 200, stuck: tuple[str, ...] = (), token: str = TOKEN) -> None:
        self.ready = ready
        self.token = token
        self.stuck = stuck
        self.orders: dict[str, dict[str, Any]] = {}
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.cancellations: dict[str, dict[str, Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if (method, path) == ("GET", "/health/ready"):
            return httpx.Response(self.ready, json={"status": "ok" if self.ready == 200 else "no"})
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return httpx.Response(
                401, json={"title": "Unauthenticated", "status": 401, "detail": "bad key"}
            )
        if (method, path) == ("POST", "/orders"):
            body = json.loads(request.content)
            order = {"order_id": str(uuid.uuid4()), "status": "PENDING", **body}
            self.orders[order["order_id"]] = order
            return httpx.Response(201, json=order)
        if method == "POST" and (m := re.fullmatch(r"/orders/([^/]+)/checkout", path)):
            assert request.headers["Idempotency-Key"]
            checkout: dict[str, Any] = {
                "checkout_id": str(uuid.uuid4()),
                "order_id": m[1],
                "state": "STARTED",
                "steps": [{"name": "checkout", "status": "STARTED", "at": "t", "detail": None}],
            }
            self.checkouts[checkout["checkout_id"]] = checkout
            return httpx.Response(202, json=checkout)
        if method == "GET" and (m := re.fullmatch(r"/checkouts/([^/]+)", path)):
            self._advance(self.checkouts[m[1]])
            return httpx.Response(200, json=self.checkouts[m[1]])
        if method == "GET" and (m := re.fullmatch(r"/orders/([^/]+)", path)):
            return httpx.Response(200, json=self.orders[m[1]])
        if method == "POST" and (m := re.fullmatch(r"/orders/([^/]+)/cancel", path)):
            assert json.loads(request.content)["reason"]
            cancellation: dict[str, Any] = {
                "cancellation_id": str(uuid.uuid4()),
                "order_id": m[1],
                "state": "CANCELLING_PRODUCTION",
                "refund": None,
                "rejection_reason": None,
                "steps": [{"name": "cancel", "status": "REQUESTED", "at": "t", "detail": None}],
            }
            self.cancellations[cancellation["cancellation_id"]] = cancellation
            return httpx.Response(202, json=cancellation)
        if method == "GET" and (m := re.fullmatch(r"/cancellations/([^/]+)", path)):
            cancellation = self.cancellations[m[1]]
            order = self.orders[cancellation["order_id"]]
            if order["amount"].endswith(".06"):
                cancellation.update(state="REJECTED", rejection_reason="already_in_production")
            else:
                cancellation.update(
                    state="CANCELLED",
                    refund={"refund_id": "r", "status": "SUCCEEDED", "amount": order["amount"]},
                )
                order["status"] = "CANCELLED"
            step = {"name": "cancel", "status": cancellation["state"], "at": "t", "detail": None}
            cancellation["steps"] = [*cancellation["steps"], step]
            return httpx.Response(200, json=cancellation)
        if (method, path) == ("GET", "/mock/production/orders"):
            paid = [o for o in self.orders.values() if o["status"] == "PAID"]
            return httpx.Response(
                200, json=[{"request": {"order_id": o["order_id"]}} for o in paid]
            )
        return httpx.Response(404, json={"title": "Not Found", "status": 404})

    def _advance(self, checkout: dict[str, Any]) -> None:
        order = self.orders[checkout["order_id"]]
        if checkout["state"] == "STARTED":
            checkout["state"] = "PAYMENT_PENDING"
        elif checkout["state"] == "PAYMENT_PENDING" and order["amount"] not in self.stuck:
            declined = order["amount"].endswith(".01")
            checkout["state"] = order["status"] = "FAILED" if declined else "PAID"
        else:
            return
        checkout["steps"].append(
            {"name": "payment", "status": checkout["state"], "at": "t", "detail": None}
        )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_api_not_answering_prints_one_line_and_fails() -> None:
    port = _closed_port()

    result = CliRunner().invoke(app, ["demo"], env={"CHECKOUT_API_PORT": str(port)})

    assert result.exit_code == 1
    assert result.stderr == (
        f"The API at http://127.0.0.1:{port} is not answering: start the system with "
        "`make run` (or .venv/bin/checkout up) in another terminal\n"
    )
    assert result.stdout == ""


def test_api_not_ready_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_settings(), transport=httpx.MockTransport(FakeApi(ready=503)))

    assert code == 1
    err = capsys.readouterr().err
    assert "answers but is not ready" in err
    assert len(err.strip().splitlines()) == 1


def test_on_a_pipe_prints_one_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_settings(), transport=httpx.MockTransport(FakeApi()))

    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["amount"] for r in report] == ["49.00", "25.01", "30.02", "12.50", "35.00", "40.06"]
    assert [r["state"] for r in report] == ["PAID", "FAILED", "PAID", "PAID", "PAID", "PAID"]
    assert [r["order_status"] for r in report] == [
        "PAID",
        "FAILED",
        "PAID",
        "PAID",
        "CANCELLED",
        "PAID",
    ]
    assert [r["cancellation_state"] for r in report] == [None] * 4 + ["CANCELLED", "REJECTED"]
    assert report[4]["refund"]["status"] == "SUCCEEDED"
    for row in report:
        assert set(row) == {
            "order_id",
            "order_name",
            "amount",
            "checkout_id",
            "state",
            "order_status",
            "steps",
            "cancellation_id",
            "cancellation_state",
            "refund",
        }
        assert row["order_name"].startswith("demo ")
        assert row["steps"][-1]["status"] == (row["cancellation_state"] or row["state"])


def test_a_stuck_checkout_fails_and_says_where_to_look(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(_settings(), timeout=0.3, transport=httpx.MockTransport(FakeApi(stuck=("30.02",))))

    assert code == 1
    captured = capsys.readouterr()
    assert [r["state"] for r in json.loads(captured.out)][2] == "PAYMENT_PENDING"
    assert "still PAYMENT_PENDING" in captured.err
    assert "flaky payment" in captured.err
    assert "dlq list" in captured.err


async def test_progress_is_reported_until_every_checkout_is_final() -> None:
    views: list[list[str | None]] = []
    async with httpx.AsyncClient(
        base_url="http://api",
        transport=httpx.MockTransport(FakeApi()),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        tracked = await run_demo(
            client,
            samples("t"),
            on_update=lambda rows: views.append([r.state for r in rows]),
            interval=0.01,
        )

    assert all(t.done for t in tracked)
    assert views[0] == [None] * 6
    assert any("PAYMENT_PENDING" in view for view in views)
    assert views[-1] == ["PAID", "FAILED", "PAID", "PAID", "PAID", "PAID"]
    assert [t.cancellation_state for t in tracked][4:] == ["CANCELLED", "REJECTED"]


def test_the_table_shows_every_order() -> None:
    rows = [Tracked(sample) for sample in samples("t")]
    rows[0].state, rows[0].order_status, rows[0].started, rows[0].finished = "PAID", "PAID", 1, 2.5
    out = Console(width=200, record=True, force_terminal=False)

    out.print(render(rows, now=3.0))

    text = out.export_text()
    assert "demo t espresso machine" in text
    assert "1.5s" in text
    assert "PAID" in text


def test_without_a_key_it_says_where_the_key_comes_from(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = load_settings(dev_key_file=tmp_path / "no-such-key")

    code = main(settings, transport=httpx.MockTransport(FakeApi()))

    assert code == 1
    err = capsys.readouterr().err
    assert f"No API key: {tmp_path / 'no-such-key'} does not exist" in err
    assert "make run" in err
    assert "CHECKOUT_API_KEY" in err


def test_it_sends_the_development_key_from_its_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "dev-api-key").write_text(TOKEN + "\n")
    settings = load_settings(dev_key_file=tmp_path / "dev-api-key")

    code = main(settings, transport=httpx.MockTransport(FakeApi()))

    assert code == 0
    assert len(json.loads(capsys.readouterr().out)) == 6


def test_a_refused_key_is_one_line_saying_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_settings(), transport=httpx.MockTransport(FakeApi(token="ck_another")))

    assert code == 1
    err = capsys.readouterr().err
    assert "The API refused the key (401 Unauthenticated: bad key)" in err
    assert len(err.strip().splitlines()) == 1


def test_where_to_look_next_leads_with_the_console(tmp_path: Path) -> None:
    from infra.cli.demo import Credentials, _where_next

    from_file = Credentials("ck_x", f"$(cat {tmp_path}/dev-api-key)", f"{tmp_path}/dev-api-key")
    rows = dict(_where_next([], "http://127.0.0.1:8000", "http://127.0.0.1:8001", from_file))
    key = f"`cat {tmp_path}/dev-api-key`"
    expected = f"http://127.0.0.1:8000/console (sign in with an operator key: {key})"
    assert rows["the console"] == expected
    from_env = Credentials("ck_x", "$CHECKOUT_API_KEY", "CHECKOUT_API_KEY")
    rows = dict(_where_next([], "http://h:1", "http://h:2", from_env))
    assert rows["the console"].endswith("operator key: $CHECKOUT_API_KEY)")
