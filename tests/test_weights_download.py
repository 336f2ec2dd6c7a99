"""Released weights by name, without the internet: a loopback server (tests/_release_server.py) plays the
release host and the Hugging Face Hub (HF_ENDPOINT) and serves small models this project saves in each
format; the registry's names are pointed at it through PGSEG_WEIGHTS_REGISTRY. Covers a good download, a
corrupted one (refused, nothing left in the cache), an interrupted one (resumed with HTTP Range), offline
and unreachable (one line naming the URL and the path), the Hub's cache / revisions / offline mode, gdown,
and the CLI (``pgseg models``, ``pgseg segment`` with no --checkpoint and no --out)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import sys

import pytest
import torch

from _release_server import COMMIT, ReleaseServer, start
from pgseg_core.checkpoint import load_checkpoint, resolve, save_checkpoint, trainable_state_dict
from pgseg_core.checkpoint.download import download_file
from pgseg_core.checkpoint.formats import pgseg_to_official
from pgseg_core.checkpoint.hf import hf_config_from_model_config, pgseg_to_hf
from pgseg_core.checkpoint.registry import fetch_weights, list_weights, load_registry, lookup
from pgseg_core.config import load_config
from pgseg_core.errors import CheckpointError, ConfigError, DownloadError
from pgseg_core.models.factory import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

OFFICIAL = "/releases/download/v1.0.0/group_vit_tiny_30e-{prefix}.pth"


def _bytes_of(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny GroupViT (no NPR) as an NVlabs-style .pth, as HF safetensors + config.json, and a tiny pgseg
    checkpoint file: (bytes by kind, the model's state_dict)."""
    from safetensors.torch import save

    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny", {"model.npr.enabled": False})
    model = create_model(cfg.model).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    official = _bytes_of({"model": pgseg_to_official(trainable_state_dict(model)), "epoch": 30})
    hf_state = {k: v.contiguous() for k, v in pgseg_to_hf(state).items()}
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, model, cfg, step=3)
    return {
        "official": official,
        "safetensors": save(hf_state),
        "config": json.dumps(hf_config_from_model_config(cfg.model)).encode(),
        "pgseg": path.read_bytes(),
    }, state


@pytest.fixture
def server():
    srv = ReleaseServer()
    httpd, _ = start(srv)
    yield srv
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty weights cache and Hub cache, downloads on, and a registry file to write entries into."""
    import huggingface_hub.constants as hub_constants

    for var in ("PGSEG_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # an earlier test may have set it
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    reg = tmp_path / "registry.json"
    monkeypatch.setenv("PGSEG_WEIGHTS_REGISTRY", str(reg))

    def write(**entries):
        reg.write_text(json.dumps({"weights": entries}))

    write()
    return write


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _serve_release(server, data: bytes, registered: bytes | None = None) -> tuple[str, str]:
    """Serve ``data`` under an NVlabs-style name whose prefix is ``registered``'s SHA-256; (path, url)."""
    prefix = _sha(registered if registered is not None else data)[:8]
    path = OFFICIAL.format(prefix=prefix)
    server.files[path] = data
    return path, server.url + path


def _release_entry(url: str) -> dict:
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", url).group(1)
    return {"source": "url", "url": url, "sha256_prefix": prefix, "model": "groupvit-s", "params_m": 0.1}


def _files_under(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _one_line(e: Exception) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------------------------------------
# the registry


def test_builtin_registry_names_and_release_hashes():
    reg = load_registry()
    assert {"groupvit-gcc-yfcc", "groupvit-gcc-redcaps", "nvidia/groupvit-gcc-yfcc",
            "nvidia/groupvit-gcc-redcaps", "pgseg-gcc-redcaps"} <= set(reg)  # fmt: skip
    for name in ("groupvit-gcc-yfcc", "groupvit-gcc-redcaps"):
        e = reg[name]  # the hash prefix checked after download is the one in the release's file name
        assert e.source == "url" and e.url.endswith(f"-{e.sha256_prefix}.pth") and len(e.sha256_prefix) == 8
    assert reg["nvidia/groupvit-gcc-yfcc"].repo_id == "nvidia/groupvit-gcc-yfcc"
    assert reg["pgseg-gcc-redcaps"].drive_id in reg["pgseg-gcc-redcaps"].download_url
    assert all(e.licence and e.params_m > 0 for e in reg.values())
    assert lookup("nvidia/groupvit-gcc-redcaps@v2")[1] == "v2" and lookup("no-such-model") is None
    with pytest.raises(ConfigError, match="no revisions"):
        lookup("groupvit-gcc-yfcc@v2")


def test_registry_file_with_unknown_keys_is_refused(env):
    env(mine={"source": "url", "url": "http://x/y.pth", "sha": "0"})
    with pytest.raises(ConfigError, match="unknown keys"):
        load_registry()


# ----------------------------------------------------------------------------------------------------------
# the release host (plain HTTP)


def test_good_download_loads_and_is_cached(server, env, models, tmp_path):
    files, state = models
    path, url = _serve_release(server, files["official"])
    env(**{"groupvit-gcc-yfcc": _release_entry(url)})
    seen = []
    local = fetch_weights("groupvit-gcc-yfcc", progress=lambda d, t: seen.append((d, t)))
    assert local.read_bytes() == files["official"] and local.parent.parent == tmp_path / "cache" / "weights"
    assert seen[-1] == (len(files["official"]),) * 2
    assert _files_under(tmp_path / "cache") == [local.name]  # no .part left
    model, info = load_checkpoint("groupvit-gcc-yfcc")
    assert info.source_format == "nvlabs-groupvit" and info.resolved.name == "groupvit-gcc-yfcc"
    assert info.sha256 == _sha(files["official"])
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    n = len(server.requests)
    assert resolve("groupvit-gcc-yfcc").weights == (local,)  # cached: no request
    assert len(server.requests) == n


def test_corrupted_download_is_refused_and_nothing_is_cached(server, env, models, tmp_path):
    files, _ = models
    bad = bytearray(files["official"])
    bad[len(bad) // 2] ^= 0xFF
    _, url = _serve_release(server, bytes(bad), registered=files["official"])
    env(**{"groupvit-gcc-yfcc": _release_entry(url)})
    with pytest.raises(DownloadError) as e:
        load_checkpoint("groupvit-gcc-yfcc")
    assert "refused and deleted" in _one_line(e.value) and url in str(e.value)
    assert _files_under(tmp_path / "cache") == []


def test_interrupted_download_resumes_with_range(server, env, models, tmp_path):
    files, _ = models
    path, url = _serve_release(server, files["official"])
    server.drops[path] = 2
    dest = tmp_path / "cache" / "x.pth"
    with pytest.raises(DownloadError) as e:  # no retry in this call: the part stays for the next run
        download_file(url, dest, sha256_prefix=_sha(files["official"])[:8], retries=0)
    assert "run again" in _one_line(e.value) and not dest.exists()
    part = dest.with_name("x.pth.part")
    kept = part.stat().st_size
    assert 0 < kept < len(files["official"])
    download_file(url, dest, sha256_prefix=_sha(files["official"])[:8], retries=3)  # drops once more, resumes
    assert dest.read_bytes() == files["official"] and not part.exists()
    gets = [r for r in server.requests if r[0] == "GET"]
    assert gets[0][2] == "" and gets[1][2] == f"bytes={kept}-" and len(gets) == 3
    assert gets[2][2].startswith("bytes=") and int(gets[2][2][6:-1]) > kept


def test_offline_and_unreachable_say_one_line(server, env, models, tmp_path, monkeypatch):
    files, _ = models
    _, url = _serve_release(server, files["official"])
    env(**{"groupvit-gcc-yfcc": _release_entry(url)})
    monkeypatch.setenv("PGSEG_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        resolve("groupvit-gcc-yfcc")
    dest = tmp_path / "cache" / "weights" / "groupvit-gcc-yfcc" / url.rsplit("/", 1)[1]
    assert f"fetch {url} by hand and put it at {dest}" in _one_line(e.value)
    assert server.requests == []
    monkeypatch.delenv("PGSEG_OFFLINE")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/group_vit_x_30e-{_sha(b'')[:8]}.pth"
    sock.close()  # nothing listens there
    env(**{"groupvit-gcc-yfcc": _release_entry(dead)})
    with pytest.raises(DownloadError) as e:
        resolve("groupvit-gcc-yfcc")
    assert "cannot download groupvit-gcc-yfcc" in _one_line(e.value) and f"fetch {dead} by hand" in str(
        e.value
    )
    # fetched by hand and put there: used, after its hash is checked
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(files["official"])
    monkeypatch.setenv("PGSEG_OFFLINE", "1")
    env(**{"groupvit-gcc-yfcc": _release_entry(url)})
    assert resolve("groupvit-gcc-yfcc").weights == (dest,)
    st = dest.stat()
    dest.write_bytes(files["official"][:-1] + b"x")  # replaced later by other bytes: checked again
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(CheckpointError, match="not the groupvit-gcc-yfcc release"):
        resolve("groupvit-gcc-yfcc")


def test_a_path_wins_over_a_name_and_near_misses_are_suggested(tmp_path, monkeypatch, models):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "groupvit-gcc-yfcc").mkdir()
    with pytest.raises(CheckpointError, match="without last.pt"):
        resolve("groupvit-gcc-yfcc")  # the folder, not the release
    with pytest.raises(CheckpointError, match="did you mean the released model groupvit-gcc-redcaps"):
        resolve("groupvit-gcc-redcap")
    files, _ = models
    (tmp_path / "groupvit-gcc-redcaps.safetensors").write_bytes(files["safetensors"])
    (tmp_path / "groupvit-gcc-redcaps.json").write_text(json.dumps({"format": "pgseg-checkpoint"}))
    assert resolve("groupvit-gcc-redcaps").kind == "pair"  # a 'pgseg convert' pair's stem, not the release


# ----------------------------------------------------------------------------------------------------------
# the Hugging Face Hub (HF_ENDPOINT) and Google Drive (gdown)


def test_hub_download_revision_cache_and_offline(server, env, models, monkeypatch, tmp_path):
    files, state = models
    server.hub["nvidia/groupvit-gcc-yfcc"] = {
        "config.json": files["config"],
        "model.safetensors": files["safetensors"],
    }
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    weights_path = "/nvidia/groupvit-gcc-yfcc/resolve/v1.0/model.safetensors"
    server.drops[weights_path] = 1  # cut off half-way: huggingface_hub retries within the same call
    model, info = load_checkpoint("nvidia/groupvit-gcc-yfcc@v1.0")
    assert info.source_format == "hf-groupvit" and info.resolved.kind == "hf"
    assert COMMIT in str(info.resolved.path) and str(tmp_path / "hub") in str(info.resolved.path)
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert {r[1] for r in server.requests} == {
        "/nvidia/groupvit-gcc-yfcc/resolve/v1.0/config.json",
        weights_path,
    }
    gets = [r[2] for r in server.requests if r[:2] == ("GET", weights_path)]
    assert len(gets) == 2  # (from byte 0 again here: httpx had handed none of the cut-off body over)
    (row,) = [r for r in list_weights() if r.entry.name == "nvidia/groupvit-gcc-yfcc"]
    assert row.cached is None  # the listing is of the entry's own revision (main), not v1.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(server.requests)
    assert resolve("nvidia/groupvit-gcc-yfcc@v1.0").sha256 == info.sha256  # from the Hub cache
    assert len(server.requests) == n
    with pytest.raises(DownloadError) as e:
        resolve("nvidia/groupvit-gcc-yfcc")  # main: never fetched
    msg = _one_line(e.value)
    assert "not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1)" in msg
    assert f"{server.url}/nvidia/groupvit-gcc-yfcc/resolve/main/config.json" in msg


def test_hub_falls_back_to_pytorch_model_bin(server, env, models, monkeypatch):
    files, state = models
    from pgseg_core.checkpoint.hf import pgseg_to_hf

    bin_bytes = _bytes_of(pgseg_to_hf(state))
    server.hub["nvidia/groupvit-gcc-redcaps"] = {
        "config.json": files["config"],
        "pytorch_model.bin": bin_bytes,
    }
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    seen = []
    local = fetch_weights("nvidia/groupvit-gcc-redcaps", progress=lambda d, t: seen.append((d, t)))
    assert (local / "pytorch_model.bin").read_bytes() == bin_bytes
    assert seen[-1] == (len(bin_bytes), len(bin_bytes))  # the weights' bytes reach the progress callback
    (row,) = [r for r in list_weights() if r.entry.name == "nvidia/groupvit-gcc-redcaps"]
    assert row.cached == local and row.cached_bytes == len(bin_bytes) + len(files["config"])
    with pytest.raises(DownloadError, match="no repository nvidia/other"):
        env(mine={"source": "hf", "repo_id": "nvidia/other"})
        fetch_weights("mine")


def test_gdrive_with_gdown_and_its_manual_step(server, env, models, monkeypatch, tmp_path):
    files, _ = models
    server.files["/uc"] = files["pgseg"]
    server.files["/quota"] = b"<html>Google Drive - Quota exceeded</html>" * 10
    env(pg={"source": "gdrive", "url": server.url + "/uc", "filename": "pg.pth"},
        quota={"source": "gdrive", "url": server.url + "/quota", "filename": "q.pth"})  # fmt: skip
    model, info = load_checkpoint("pg")  # gdown fetches a plain URL too
    assert info.source_format == "pgseg" and info.step == 3
    with pytest.raises(DownloadError) as e:
        resolve("quota")
    dest = tmp_path / "cache" / "weights" / "quota" / "q.pth"
    assert f"open {server.url}/quota in a browser, save the file as {dest}" in _one_line(e.value)
    assert _files_under(dest.parent) == []
    monkeypatch.setitem(sys.modules, "gdown", None)  # not installed
    with pytest.raises(DownloadError) as e:
        resolve("pgseg-gcc-redcaps")
    assert "pip install 'pgseg[hub]'" in _one_line(e.value)
    assert "https://drive.google.com/uc?id=1BxryBZ9hJbRpUAkjMJT865N5uRptfdjb" in str(e.value)


# ----------------------------------------------------------------------------------------------------------
# the CLI


def test_cli_segment_needs_no_checkpoint_nor_out_and_models_lists_the_cache(server, env, models, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from pgseg_cli.app import app

    files, _ = models
    _, url = _serve_release(server, files["official"])
    env(**{"groupvit-gcc-yfcc": _release_entry(url)})  # the default name, served by the loopback host
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save("a.png")
    runner = CliRunner()
    listed = runner.invoke(app, ["models"])
    assert listed.exit_code == 0 and "groupvit-gcc-yfcc (default)" in listed.output
    assert "not cached" in listed.output.split("groupvit-gcc-redcaps")[0]
    res = runner.invoke(app, ["segment", "a.png", "--classes", "cat,dog", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "using the released model groupvit-gcc-yfcc" in res.stderr
    assert f"writing into {work / 'pgseg_out'}" in res.stderr
    assert np.asarray(Image.open(work / "pgseg_out" / "a_label.png")).shape == (40, 56)
    listed = runner.invoke(app, ["models", "--json"])
    (row,) = [json.loads(ln) for ln in listed.output.splitlines() if '"groupvit-gcc-yfcc"' in ln]
    assert row["cached_bytes"] == len(files["official"]) and row["default"]

    monkeypatch.setenv("PGSEG_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PGSEG_OFFLINE", "1")
    res = runner.invoke(app, ["segment", "a.png", "--classes", "cat,dog", "--device", "cpu"])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "Traceback" not in res.output
    assert f"fetch {url} by hand and put it at {tmp_path / 'empty'}" in errors[0]


def test_library_chatter_is_hidden_unless_verbose(monkeypatch):
    """Without -v the CLI turns off transformers' "Loading weights" bars and warnings before transformers is
    imported (a command imports it lazily); with -v it leaves them on. A value the user set is kept."""
    from pgseg_cli._console import setup_logging

    quiet = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for var in quiet:
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    setup_logging(verbose=True)
    assert not set(quiet) & set(os.environ)
    setup_logging(verbose=False)
    assert {k: os.environ.get(k) for k in quiet} == quiet
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    setup_logging(verbose=False)
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    setup_logging()  # back to the default state for later tests


def test_concurrent_fetches_of_one_file_download_it_once(server, env, models, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    files, _ = models
    path, url = _serve_release(server, files["official"])
    dest = tmp_path / "cache" / "x.pth"
    prefix = _sha(files["official"])[:8]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: download_file(url, dest, sha256_prefix=prefix), range(4)))
    assert got == [dest] * 4 and dest.read_bytes() == files["official"]
    assert [r[0] for r in server.requests] == ["GET"] and _files_under(dest.parent) == ["x.pth"]


def test_a_name_works_in_every_command_that_takes_a_checkpoint(server, env, models, tmp_path, monkeypatch):
    """convert, export-onnx, visualize-prototypes, train --init (init_from) and eval's default metrics path
    take a released model's name; it is downloaded once."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from pgseg_cli.app import app
    from pgseg_core.checkpoint import init_from
    from pgseg_core.eval.report import metrics_path

    files, state = models
    _, url = _serve_release(server, files["official"])
    env(**{"groupvit-gcc-redcaps": _release_entry(url)})
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save("a.png")
    runner = CliRunner()
    res = runner.invoke(app, ["convert", "groupvit-gcc-redcaps", "pair"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint("pair.safetensors")[1].config.name == "nvlabs-groupvit:groupvit-gcc-redcaps"
    res = runner.invoke(app, ["export-onnx", "-c", "groupvit-gcc-redcaps", "-o", "m.onnx", "--size", "64"])
    assert res.exit_code == 0 and (tmp_path / "m.onnx").exists(), res.output
    res = runner.invoke(app, ["visualize-prototypes", "a.png", "-c", "groupvit-gcc-redcaps", "--out", "viz"])
    assert res.exit_code == 0 and (tmp_path / "viz" / "index.html").exists(), res.output
    model = create_model(load_config("pgseg-tiny").model)  # PGSeg from GroupViT: NPR keys are new
    report = init_from(model, "groupvit-gcc-redcaps")
    assert report["new_keys"] and all("npr" in k or "downsample_spatial" in k or "logit_scale" in k
                                      for k in report["new_keys"])  # fmt: skip
    assert torch.equal(model.state_dict()["img_encoder.pos_embed"], state["img_encoder.pos_embed"])
    assert (
        metrics_path(None, "groupvit-gcc-redcaps", "voc21", "groupvit").as_posix()
        == "metrics_voc21_groupvit.json"
    )
    assert [r[0] for r in server.requests] == ["GET"]  # downloaded once, then read from the cache
