"""Data files fetched and verified (ilf.data), against a real HTTP server on 127.0.0.1 standing in
for the network: a good download, a corrupted one, an interrupted one, no network at all, and a
bad copy in the cache. `shared/data` is hidden (as on a user's machine) by pointing the lookup
beside an empty directory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ilf import data
from ilf.errors import IlfError


class Handler(BaseHTTPRequestHandler):
    root: Path = Path(".")
    hits: list[str] = []

    def log_message(self, *a):  # keep the test output clean
        pass

    def do_GET(self):
        mode, _, name = self.path.strip("/").partition("/")
        Handler.hits.append(self.path)
        src = Handler.root / name
        if not src.is_file():
            self.send_error(404)
            return
        body = src.read_bytes()
        if mode == "corrupt":
            body = body[:-10] + b"X" * 10
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":  # the connection drops halfway through
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server(data_dir):
    Handler.root, Handler.hits = data_dir, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def user_machine(tmp_path, monkeypatch):
    """No shared/data, no ILF_DATA_DIR, an empty cache: what a user who cloned ilf has."""
    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ILF_DATA_DIR", raising=False)
    monkeypatch.delenv("ILF_DATA_BASE_URL", raising=False)
    monkeypatch.setattr(data, "shared_data_dir", lambda: None)
    return tmp_path / "cache" / "data"


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_download_is_verified_cached_and_then_used_offline(server, user_machine, monkeypatch, data_dir):
    monkeypatch.setenv("ILF_DATA_BASE_URL", server + "/good")
    path = data.locate("mbpp")
    assert path == user_machine / "mbpp.jsonl"
    assert path.read_bytes() == (data_dir / "mbpp.jsonl").read_bytes()
    assert _leftovers(user_machine) == ["mbpp.jsonl"]  # no temporary file left
    # Offline now: the cache serves it, nothing is requested again.
    monkeypatch.setenv("ILF_DATA_BASE_URL", "http://127.0.0.1:9/none")
    hits = len(Handler.hits)
    assert data.locate("mbpp") == path and len(Handler.hits) == hits
    from ilf.tasks import load_tasks

    assert len(load_tasks("mbpp", split="test")) == 100


@pytest.mark.parametrize("mode,words", [("corrupt", "sha256"), ("cut", "")])
def test_corrupted_or_interrupted_download_is_refused_and_leaves_nothing(server, user_machine, mode, words):
    with pytest.raises(IlfError) as e:
        data.download("authors", base_url=f"{server}/{mode}")
    assert "surge_annotations.jsonl" in str(e.value) and words in str(e.value)
    assert "\n" not in str(e.value)
    assert _leftovers(user_machine) == []


def test_no_network_and_no_copy_is_one_line_naming_the_file_and_three_ways(user_machine, monkeypatch):
    monkeypatch.setenv("ILF_DATA_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(IlfError) as e:
        data.locate("authors")
    msg = str(e.value)
    assert "\n" not in msg and "surge_annotations.jsonl" in msg
    assert "--data-dir" in msg and "ilf data fetch" in msg and str(user_machine) in msg
    assert _leftovers(user_machine) == []


def test_a_cached_copy_with_the_wrong_hash_is_refused(user_machine):
    user_machine.mkdir(parents=True)
    (user_machine / "HumanEval.jsonl.gz").write_bytes(b"not the file")
    with pytest.raises(IlfError, match="sha256 does not match"):
        data.locate("humaneval")


def test_user_data_dir_is_the_only_place_looked_in(user_machine, tmp_path):
    empty = tmp_path / "mine"
    empty.mkdir()
    with pytest.raises(IlfError, match="mine/mbpp.jsonl: file not found"):
        data.locate("mbpp", empty)


def test_cli_data_fetch_then_status(server, tmp_path, data_dir):
    """`ilf data fetch` downloads all four into the cache; `ilf data` then shows them verified.
    Run from a copy of the package tree with nothing beside it (no shared/data)."""
    env = {"PATH": "/usr/bin:/bin", "ILF_CACHE": str(tmp_path / "cache"), "ILF_DATA_BASE_URL": server + "/good", "HOME": str(tmp_path)}
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    code = (
        "import sys; from ilf import data; data.shared_data_dir = lambda: None; "
        "from ilf.cli import main; sys.argv = ['ilf'] + sys.argv[1:]; main()"
    )
    fetch = subprocess.run([sys.executable, "-c", code, "data", "fetch"], cwd=lonely, env=env, capture_output=True, text=True)
    assert fetch.returncode == 0, fetch.stderr
    assert fetch.stderr.count("downloaded") == 4
    st = subprocess.run([sys.executable, "-c", code, "data", "--json"], cwd=lonely, env=env, capture_output=True, text=True)
    rows = json.loads(st.stdout)
    assert [r["where"] for r in rows] == ["cache"] * 4 and all(r["sha256_ok"] for r in rows)
    again = subprocess.run([sys.executable, "-c", code, "data", "fetch"], cwd=lonely, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.count("present") == 4
