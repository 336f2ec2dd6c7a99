"""Named web datasets (img2dataset-style shards), mixtures, datasets.toml, prep-shards --index, and
training on them with bad samples skipped and counted (issue 14)."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from _webdata import make_web_dataset, write_img2dataset_shard
from pgseg_cli.app import app
from pgseg_cli.commands.train import default_run_dir
from pgseg_core.config import DataConfig
from pgseg_core.data.loader import make_train_loader
from pgseg_core.data.skips import skip_metrics
from pgseg_core.data.sources.named import is_dataset_spec, resolve_train_sources
from pgseg_core.data.sources.web_index import index_shard_folder
from pgseg_core.errors import ConfigError, DataError

runner = CliRunner()

# groupvit-s shrunk so that 3 CPU steps take seconds (the preset's architecture, smaller widths)
SMALL = [
    "--data.img_size", "64", "--model.vision.img_size", "64", "--model.vision.embed_dim", "64",
    "--model.vision.depths", "[1,1,1]", "--model.vision.num_heads", "[2,2,2]",
    "--model.vision.num_group_tokens", "[8,4,0]", "--model.vision.num_output_groups", "[8,4]",
    "--model.text.layers", "1", "--model.text.width", "64", "--model.text.heads", "2",
    "--model.proj_hidden", "64", "--model.embed_dim", "32", "--train.log_every", "1",
]  # fmt: skip


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "D"
    make_web_dataset(root, "cc12m")
    make_web_dataset(root, "cc3m")
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(root))
    return root


def _train(out, data: str, *extra: str):
    args = ["train", "--model", "groupvit-s", "--data", data, "--train.steps", "3", "--train.batch_size", "8"]
    args += ["--device", "cpu", "--out", str(out), *SMALL, *extra]
    return runner.invoke(app, args, catch_exceptions=False)


@pytest.mark.parametrize("data", ["cc12m", "cc3m+cc12m"])
def test_train_on_named_dataset_with_bad_samples(data_root, tmp_path, data):
    result = _train(tmp_path / "run", data)
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[-1]["skipped_samples"] > 0  # the corrupt JPEG and the truncated tar
    assert "bad sample(s) skipped" in result.output  # the CLI's log handler (stderr)


def test_default_run_dir():
    assert str(default_run_dir("groupvit-s", "cc12m:2+redcaps")) == "pgseg_runs/groupvit-s_cc12m-2+redcaps"
    assert str(default_run_dir("cfg/my.json", "/data/shards/")) == "pgseg_runs/my_shards"


def test_loader_counts_a_corrupt_jpeg(tmp_path, monkeypatch):
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path))
    write_img2dataset_shard(tmp_path / "cc3m", 0, 6, corrupt=(1,), tag="cc3m")
    cfg = DataConfig(train="cc3m", img_size=32, num_workers=0, shuffle_buffer=1)
    loader = make_train_loader(cfg, batch_size=5, seed=0)
    batches = list(itertools.islice(iter(loader), 2))
    assert batches[0]["image"].shape == (5, 3, 32, 32)
    assert all("cc3m photo" in t for b in batches for t in b["text"])
    assert skip_metrics()["skipped_samples"] >= 1


def test_mixture_weights_and_draws(tmp_path, monkeypatch):
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path))
    for name in ("cc3m", "cc12m"):
        for s in range(2):
            write_img2dataset_shard(tmp_path / name, s, 10, tag=name, size=(40, 40))
    default = resolve_train_sources("cc3m+cc12m")
    assert [(s.name, s.weight, s.count) for s in default] == [("cc3m", 20.0, 20), ("cc12m", 20.0, 20)]
    sources = resolve_train_sources("cc12m:3+cc3m")
    assert [(s.name, s.weight) for s in sources] == [("cc12m", 3.0), ("cc3m", 1.0)]
    cfg = DataConfig(train="cc12m:3+cc3m", img_size=16, num_workers=0, shuffle_buffer=1)
    texts = [t for b in itertools.islice(iter(make_train_loader(cfg, 50, seed=1)), 8) for t in b["text"]]
    share = sum(t.startswith("cc12m") for t in texts) / len(texts)
    assert 0.65 < share < 0.85, share  # 0.75 expected; 400 draws


def test_spec_syntax(tmp_path):
    assert is_dataset_spec("cc12m") and is_dataset_spec("cc12m:2+redcaps:0.5")
    assert not is_dataset_spec(str(tmp_path)) and not is_dataset_spec("x/train-{000000..000001}.tar")
    with pytest.raises(DataError, match="weight"):
        resolve_train_sources("cc12m:0")


def test_unknown_and_missing_datasets_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError) as e:
        resolve_train_sources("cc12n")
    msg = str(e.value)
    assert "did you mean 'cc12m'" in msg and "coco-captions" in msg and str(tmp_path) in msg
    assert "\n" not in msg
    with pytest.raises(DataError) as e:
        resolve_train_sources("redcaps")
    msg = str(e.value)
    assert str(tmp_path / "redcaps") in msg and "prep-shards --source redcaps" in msg and "\n" not in msg
    result = _train(tmp_path / "run", "cc3m")
    assert result.exit_code == 1 and "no shards" in result.output and "Traceback" not in result.output


def test_datasets_file_places_patterns_and_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path / "nowhere"))
    write_img2dataset_shard(tmp_path / "elsewhere", 0, 4)
    write_img2dataset_shard(tmp_path / "elsewhere", 1, 4)
    toml = tmp_path / "datasets.toml"
    toml.write_text(
        '[datasets.cc12m]\npath = "elsewhere"\n'
        '[datasets.mine]\npath = "elsewhere"\nshards = "{00000..00001}.tar"\nsamples = 8\n'
        '[datasets.wrong]\npath = "elsewhere"\nsamples = 9\n'
        '[datasets.remote]\nshards = "s3://bucket/x/{00000..00002}.tar"\nsamples = 30\n'
    )
    (cc12m,) = resolve_train_sources("cc12m", str(toml))
    assert cc12m.count == 8 and len(cc12m.urls) == 2
    (mine,) = resolve_train_sources("mine", str(toml))
    assert mine.count == 8 and mine.urls[0].endswith("elsewhere/00000.tar")
    (remote,) = resolve_train_sources("remote", str(toml))
    assert remote.urls == [f"s3://bucket/x/{i:05d}.tar" for i in range(3)]
    with pytest.raises(DataError, match="holds 8 samples but .*datasets.toml says 9"):
        resolve_train_sources("wrong", str(toml))
    toml.write_text("[datasets.bad]\npaht = 'x'\n")
    with pytest.raises(ConfigError, match="unknown key 'paht'"):
        resolve_train_sources("bad", str(toml))


def test_prep_shards_index_counts_real_samples(tmp_path, monkeypatch):
    folder = make_web_dataset(tmp_path, "cc12m", shards=3, per_shard=10)
    summary = index_shard_folder(folder)
    assert summary["count"] == 19  # shard 0: 9 good + 1 corrupt, shard 1: 10, shard 2 truncated
    assert summary["skipped"]["unreadable_tars"] == 1 and summary["skipped"]["corrupt_samples"] == 1
    index = json.loads((folder / "index.json").read_text())
    assert index["splits"]["train"] == {"shards": ["00000.tar", "00001.tar"], "count": 19}
    assert index["layout"] == "img2dataset" and index["skipped"]["unreadable_tars"] == 1
    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path))
    (src,) = resolve_train_sources("cc12m")
    assert src.count == 19 and len(src.urls) == 2
    result = runner.invoke(app, ["prep-shards", "--index", str(folder), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "19 samples in 2 tars" in " ".join(result.output.split())


def test_resolve_shards_reads_dataset_names_for_train(tmp_path, monkeypatch):
    from pgseg_core.data.shards import resolve_shards

    monkeypatch.setenv("PGSEG_DATA_ROOT", str(tmp_path))
    write_img2dataset_shard(tmp_path / "cc3m", 0, 3)
    write_img2dataset_shard(tmp_path / "cc12m", 0, 3)
    assert len(resolve_shards("cc3m+cc12m", "train")) == 2
    with pytest.raises(DataError, match="no shards at 'cc3m'"):
        resolve_shards("cc3m", "val-caption")


def test_folder_source_reads_coco_captions_json(tmp_path):
    from PIL import Image

    from pgseg_core.data.captions import collect_captioned_images

    for name in ("000000000009.jpg", "000000000025.jpg", "000000000030.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    ann = [(5, 9, "second"), (2, 9, "first"), (7, 25, "a giraffe"), (8, 77, "x")]
    coco = {
        "images": [
            {"id": i, "file_name": f}
            for i, f in ((9, "000000000009.jpg"), (25, "000000000025.jpg"), (77, "gone"))
        ],
        "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in ann],
    }
    (tmp_path / "captions_train2017.json").write_text(json.dumps(coco))
    pairs, counts = collect_captioned_images(tmp_path, tmp_path / "captions_train2017.json")
    assert [(p.name, c) for p, c in pairs] == [
        ("000000000009.jpg", "first"),
        ("000000000025.jpg", "a giraffe"),
    ]
    assert counts == {"no_caption": 1, "missing_image": 1}
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO captions file"):
        collect_captioned_images(tmp_path, tmp_path / "bad.json")
