"""``pgseg models``: the released weights pgseg fetches by name, their sizes, sources, licences and cache."""

from __future__ import annotations

from typing import Annotated

import typer

from .._console import handle_errors, out


def register(app: typer.Typer) -> None:
    @app.command("models")
    @handle_errors
    def models_cli(
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model on stdout.")] = False,
    ) -> None:
        """List the released models that --checkpoint accepts by name, and which are cached.

        Downloads go to $PGSEG_CACHE/weights (default ~/.cache/pgseg/weights); Hugging Face repositories to
        the Hub's cache (HF_HOME). PGSEG_OFFLINE=1 or HF_HUB_OFFLINE=1 turn downloads off."""
        from pgseg_core.checkpoint.registry import list_weights, weights_dir

        rows = list_weights()
        if as_json:
            for row in rows:
                typer.echo(_record(row))
            return
        for row in rows:
            e = row.entry
            star = " (default)" if row.is_default else ""
            cached = f"cached: {row.cached} ({row.cached_bytes / 1e6:.0f} MB)" if row.cached else "not cached"
            size = f"~{row.approx_mb:.0f} MB" if row.approx_mb else "size not stated"
            out.print(
                f"[bold]{e.name}[/]{star}  {e.source}, {size}  {cached}", highlight=False, soft_wrap=True
            )
            for line in (e.description, f"source: {e.download_url}", f"licence: {e.licence or 'not stated'}"):
                if line:
                    out.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)
        out.print(f"cache: {weights_dir()}", highlight=False, markup=False, soft_wrap=True)


def _record(row) -> str:
    import json

    e = row.entry
    return json.dumps(
        {
            "name": e.name,
            "default": row.is_default,
            "source": e.source,
            "url": e.download_url,
            "description": e.description,
            "licence": e.licence,
            "model": e.model,
            "params_m": e.params_m,
            "approx_mb": round(row.approx_mb, 1),
            "sha256_prefix": e.sha256 or e.sha256_prefix,
            "cached": str(row.cached) if row.cached else None,
            "cached_bytes": row.cached_bytes,
        }
    )
