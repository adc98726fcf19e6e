"""The rollback guard of signed bundles (the contract is docs/bundle.md, "Integrity").

A signed bundle older (manifest `version`) than the newest one of the same signer read on this
device is refused (`check_rollback`; a sealed record per signer in the cache folder), and so is
any signed bundle where the cache has no usable seal key to keep that record, unless the guard
is turned off on purpose (`allow_rollback=True`, `--allow-rollback`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgekd.errors import BundleError

ROLLBACK_DIR = "rollback"  # in the cache folder: <key_id>.json per signer, sealed
ROLLBACK_KIND = "rollback-record"
log = logging.getLogger("edgekd.runtime")


def check_rollback(cache: Path, signer: str, version: int | None, where: Path) -> None:
    """Refuse a bundle signed by `signer` whose version is older than the newest this device has
    read from that signer; remember `version` when it is newer. BundleError says both numbers.

    The record is `<cache>/rollback/<key_id>.json` (`{"version": N}`), sealed with the cache's
    CacheSeal and updated under a lock. A record whose seal does not match was not written here
    and is ignored (with a warning) and replaced. Without a usable seal key (one that cannot be
    created, or is not private, not this user's, a symlink, of the wrong size) no record can be
    trusted or kept, so the guard refuses to vouch: BundleError saying what is wrong with the
    key and how to fix it, or to pass `allow_rollback=True` (`--allow-rollback`), which skips
    this check. Whoever can delete the cache folder can reset the record: it stops a replayed
    older bundle, not a compromised device.
    """
    import fcntl  # POSIX, like the bundle reader; imported only for signed bundles

    from edgekd.runtime.cache_seal import CacheSeal

    try:
        seal, why = CacheSeal.open_key(cache)
    except OSError as exc:  # e.g. another user's cache folder, unreadable here
        seal, why = None, (f"it cannot be read here ({exc}); choose a cache folder of this "
                           "user's ($EDGEKD_CACHE, cache_dir=)")  # fmt: skip
    if seal is None:
        raise BundleError(
            f"{where}: signed by {signer}, but the rollback guard cannot vouch that it is not "
            f"older than a bundle this device already read: the cache {cache}, which keeps the "
            f"sealed rollback record, has no usable seal key: {why}; or turn the guard off on "
            "purpose with --allow-rollback (allow_rollback=True)"
        )
    folder = cache / ROLLBACK_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(
            f"{where}: signed by {signer}, but the rollback record cannot be kept in {folder} "
            f"({exc}): choose a cache folder of this user's ($EDGEKD_CACHE, cache_dir=), or turn "
            "the guard off on purpose with --allow-rollback (allow_rollback=True)"
        ) from exc
    path = folder / f"{signer}.json"
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # concurrent loads: the newest version wins
        payload, why = seal.read(path, kind=ROLLBACK_KIND, digest="", signer=signer, context={})
        seen = None
        if payload is not None:
            seen = json.loads(payload)["version"]
        elif why != "missing":
            log.warning("ignoring rollback record %s: %s", path, why)
        if seen is not None and (version is None or version < seen):
            found = "no version (schema_version 2)" if version is None else f"version {version}"
            raise BundleError(
                f"{where}: bundle has {found}, older than version {seen} already read on this "
                f"device from signer {signer}: refusing a rollback (pass allow_rollback=True, "
                "or --allow-rollback, to load an older signed bundle on purpose)"
            )
        if version is not None and (seen is None or version > seen):
            seal.write(path, json.dumps({"version": version}).encode("ascii"),
                       kind=ROLLBACK_KIND, digest="", signer=signer, context={})
