"""``pgseg prep-shards`` for URL lists: checks that name flags, the call into
:mod:`pgseg_core.data.sources.download`, and the rendering of its counts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .._console import err, out, progress_bar


def web_sources() -> tuple[str, ...]:
    from pgseg_core.data.sources.registry import BUILTIN

    return ("url-list", *sorted(BUILTIN))


def run_download(
    source: str,
    urls: Optional[Path],
    out_dir: Optional[Path],
    *,
    url_col: Optional[str],
    caption_col: Optional[str],
    settings_kw: dict,
    emit_script: Optional[Path],
    distributor: str,
) -> None:
    """Download (or, with ``emit_script``, write the distributed driver script) and print the counts."""
    from pgseg_core.data.sources.download import download_url_list
    from pgseg_core.data.sources.url_list import DownloadSettings

    if urls is None:
        raise typer.BadParameter(f"--source {source} needs the URL list file", param_hint="'--urls'")
    if out_dir is None:
        raise typer.BadParameter(f"--source {source} needs the shard folder to write", param_hint="'--out'")
    if distributor not in ("pyspark", "ray"):
        raise typer.BadParameter("use pyspark or ray", param_hint="'--distributor'")
    settings = DownloadSettings(**settings_kw)
    if emit_script is not None:
        _emit(source, urls, out_dir, url_col, caption_col, settings, emit_script, distributor)
        return
    with progress_bar("download") as update:
        summary = download_url_list(
            urls, out_dir, source=source, url_col=url_col, caption_col=caption_col, settings=settings,
            progress=lambda d, t: update(d, t, phase="shards"),
        )  # fmt: skip
    d = summary["download"]
    if summary["already"]:
        out.print(f"{out_dir} is already a finished shard set ({summary['count']} samples): nothing to do")
        return
    out.print(
        f"wrote {summary['count']} samples in {summary['shards']} tars to {summary['out_dir']}; "
        f"of {d['rows']} URLs: {d['written']} written, {d['failed_to_download']} skipped (not downloaded), "
        f"{d['failed_to_resize']} corrupt (not an image)"
    )
    for msg, n in sorted(d["errors"].items(), key=lambda kv: -kv[1])[:5]:
        err.print(f"  {n:>8}  {msg}")


def _as_url(p: Path) -> str:
    """A path option given as a URL (``s3://b/x``, which Path shortens to ``s3:/b/x``) as the URL again."""
    import re

    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", str(p))


def _emit(source, urls, out_dir, url_col, caption_col, settings, path: Path, distributor: str) -> None:
    from pgseg_core.data.sources.url_list import distributed_script, img2dataset_kwargs, url_list_for
    from pgseg_core.utils.io import atomic_write

    lst = url_list_for(source, urls, url_col, caption_col)
    if lst.convert:
        raise typer.BadParameter(
            f"{urls} must first be rewritten with a header (run once locally, or convert it to parquet with "
            "url and caption columns) before a cluster reads it",
            param_hint="'--emit-script'",
        )
    kwargs = img2dataset_kwargs(_as_url(urls), _as_url(out_dir), lst, settings)
    text = distributed_script(kwargs, distributor)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    out.print(f"wrote the {distributor} driver script {path}: run `python {path}` on the driver / head node")
