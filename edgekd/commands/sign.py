"""`edgekd keygen` and `edgekd sign`: Ed25519 keys and bundle signatures (runtime install)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def keygen(
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the key pair.")],
    ) -> None:
        """Write an Ed25519 key pair: edgekd-signing.key (private, mode 0600) and .pub."""
        from edgekd.runtime.integrity import keygen as make_keys

        private, public = make_keys(out)
        typer.echo(f"private key: {private}  (keep it secret)\npublic key:  {public}  "
                   "(give it to devices: --trusted-key or $EDGEKD_TRUSTED_KEYS)")

    @app.command()
    @user_errors
    def sign(
        bundle: Annotated[Path, typer.Argument(help="Bundle folder (NAME.edgekd).")],
        key: Annotated[Path, typer.Option(
            "--key", help="Ed25519 private key (PEM), readable by its owner only (chmod 600).")],
    ) -> None:
        """Sign a bundle in place (writes signature.json; replaces an older signature)."""
        from edgekd.runtime.integrity import sign_bundle

        record = sign_bundle(bundle, key)
        typer.echo(f"{bundle}: signed by key {record['key_id']} "
                   f"(manifest digest {record['manifest_sha256'][:16]}...)")
