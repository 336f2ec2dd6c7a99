"""URL lists -> img2dataset -> shard set, against a loopback HTTP server: counts match what was served,
opt-out headers are honoured, a kill -9 mid-download and a rerun give every good sample exactly once."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _loopback import serve, write_url_list
from pgseg_cli.app import app
from pgseg_core.data.sources.url_list import (
    DownloadSettings,
    distributed_script,
    img2dataset_kwargs,
    url_list_for,
)
from pgseg_core.errors import DataError

pytest.importorskip("img2dataset")

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"good": 120, "missing": 10, "slow": 4, "html": 8, "trunc": 8, "optout": 5}
FAST = ["--processes", "1", "--threads", "4", "--timeout", "1", "--retries", "0", "--shard-size", "20"]


def _samples(folder: Path) -> list[tuple[str, str]]:
    index = json.loads((folder / "index.json").read_text())
    out = []
    for name in index["splits"]["train"]["shards"]:
        with tarfile.open(folder / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for n, data in members.items():
            if n.endswith(".txt"):
                out.append((n[:-4], data.decode()))
    return out


def test_download_kill_and_resume(tmp_path):
    server, base = serve(delay=0.15)
    try:
        rows = write_url_list(tmp_path / "urls.tsv", base, COUNTS)
        out = tmp_path / "cc"
        cmd = [sys.executable, "-m", "pgseg_cli", "prep-shards", "--source", "url-list", "--urls",
               str(tmp_path / "urls.tsv"), "--out", str(out), *FAST]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and not list(out.glob("*_stats.json")) and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the download ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "index.json").exists()  # unfinished: never read as data
        done_before = len(list(out.glob("*_stats.json")))
        assert 1 <= done_before < 8
        result = CliRunner().invoke(app, ["prep-shards", "--source", "url-list", "--urls",
                                          str(tmp_path / "urls.tsv"), "--out", str(out), *FAST])  # fmt: skip
        assert result.exit_code == 0, result.output
    finally:
        server.shutdown()
    samples = _samples(out)
    good = {c for u, c in rows if "/good/" in u}
    assert len(samples) == len({k for k, _ in samples}) == COUNTS["good"]  # every good sample exactly once
    assert {c for _, c in samples} == good
    index = json.loads((out / "index.json").read_text())
    d = index["download_counts"]
    assert index["splits"]["train"]["count"] == COUNTS["good"] and d["rows"] == len(rows)
    assert d["written"] == COUNTS["good"]
    assert d["failed_to_download"] == COUNTS["missing"] + COUNTS["slow"] + COUNTS["optout"]
    assert d["failed_to_resize"] == COUNTS["html"] + COUNTS["trunc"]
    assert (
        any("X-Robots-Tag" in m for m in d["errors"]) and index["download"]["settings"]["image_size"] == 512
    )
    text = " ".join(result.output.split())
    assert f"{COUNTS['good']} written" in text and f"{COUNTS['html'] + COUNTS['trunc']} corrupt" in text
    args = ["prep-shards", "--source", "url-list", "--urls", str(tmp_path / "urls.tsv"), "--out", str(out)]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already a finished shard set" in " ".join(again.output.split())


def test_builtin_columns_and_distributed_script(tmp_path):
    cc12m = tmp_path / "cc12m.tsv"
    cc12m.write_text("http://a/1.jpg\ta cat\nhttp://a/2.jpg\ta dog\n")
    lst = url_list_for("cc12m", cc12m, None, None)
    assert lst.convert == "headerless" and lst.columns == ("url", "caption")
    assert url_list_for("cc3m", cc12m, None, None).columns == ("caption", "url")
    plain = url_list_for("url-list", cc12m, "URL", "TEXT")
    assert (plain.input_format, plain.url_col, plain.caption_col) == ("tsv", "URL", "TEXT")
    with pytest.raises(DataError, match="url-col"):
        url_list_for("yfcc14m", cc12m, None, None)
    kwargs = img2dataset_kwargs("s3://b/urls.parquet", "s3://b/cc12m", plain, DownloadSettings())
    for distributor in ("pyspark", "ray"):
        script = distributed_script(kwargs, distributor)
        tree = ast.parse(script)  # valid Python
        args = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGS")
        got = ast.literal_eval(args)
        assert got == {**kwargs, "distributor": distributor, "subjob_size": 1000}
        assert got["resize_mode"] == "keep_ratio" and got["image_size"] == 512 and got["retries"] == 2
        assert set(got["disallowed_header_directives"]) == {"noai", "noimageai", "noindex", "noimageindex"}
    assert "SparkSession" in distributed_script(kwargs, "pyspark")
    assert 'ray.init(address="auto")' in distributed_script(kwargs, "ray")
    urls = tmp_path / "u.parquet"
    urls.write_bytes(b"")
    args = ["prep-shards", "--source", "url-list", "--urls", str(urls), "--out", "s3://b/x"]
    result = CliRunner().invoke(app, [*args, "--emit-script", str(tmp_path / "d.py"), "--distributor", "ray"])
    assert result.exit_code == 0, result.output
    script = (tmp_path / "d.py").read_text()
    assert "ray.init" in script and "'output_folder': 's3://b/x'" in script


def test_headerless_and_redcaps_lists_become_parquet(tmp_path):
    import pyarrow.parquet as pq

    from pgseg_core.data.sources.download import convert_url_list

    cc3m = tmp_path / "Train_GCC-training.tsv"
    cc3m.write_text('a "quoted" cat\thttp://a/1.jpg\na dog\thttp://a/2.jpg\n')
    table = pq.read_table(convert_url_list(url_list_for("cc3m", cc3m, None, None), tmp_path))
    assert table.column("url").to_pylist() == ["http://a/1.jpg", "http://a/2.jpg"]
    assert table.column("caption").to_pylist() == ['a "quoted" cat', "a dog"]
    red = tmp_path / "redcaps"
    red.mkdir()
    for sub, n in (("aww", 2), ("pics", 1)):
        ann = [
            {"url": f"http://r/{sub}{i}.jpg", "caption": f"{sub} {i}", "image_id": str(i)} for i in range(n)
        ]
        (red / f"{sub}_2020.json").write_text(json.dumps({"info": {}, "annotations": ann}))
    (tmp_path / "s").mkdir()
    table = pq.read_table(convert_url_list(url_list_for("redcaps", red, None, None), tmp_path / "s"))
    assert table.column("caption").to_pylist() == ["aww 0", "aww 1", "pics 0"]


def test_index_leaves_out_unfinished_img2dataset_tars(tmp_path):
    from _webdata import write_img2dataset_shard

    from pgseg_core.data.sources.web_index import index_shard_folder

    write_img2dataset_shard(tmp_path, 0, 5)
    write_img2dataset_shard(tmp_path, 1, 5, stats=False)  # a download killed while writing shard 1
    summary = index_shard_folder(tmp_path)
    assert summary["count"] == 5 and summary["skipped"]["unfinished_tars"] == 1
