"""Run a locally built image like a pod, without a container daemon (root, buildah).

:class:`Container` mounts the image with buildah and runs a command chrooted in it as uid 1000
on a read-only root filesystem, on the host network, with host folders at :data:`WRITABLE`
(buildah's own ``run`` has no read-only root). Used by tests/test_image_*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

USER = "1000:1000"
# KFP's executor pod: emptyDirs of its Argo template; /tmp holds the launcher's own files.
KFP_SCRATCH = ("/gcs", "/minio", "/s3", "/.local", "/.cache", "/.config", "/tmp")
# The training pods' emptyDirs besides /tmp and /dev/shm (manifests/trainer/srs-torch.yaml).
POD_SCRATCH = ("/home/srs", "/cache")
WRITABLE = KFP_SCRATCH + POD_SCRATCH


def missing(image: str) -> str | None:
    """Why ``image`` cannot be run here, or None."""
    if os.geteuid() != 0:
        return "needs root (buildah mounts the image; the runner uses mount namespaces)"
    for tool in ("buildah", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (images/ci-smoke.sh installs buildah)"
    found = subprocess.run(["buildah", "inspect", "--type", "image", image],
                           capture_output=True, text=True)
    if found.returncode != 0:
        return f"image {image} is not built (images/ci-smoke.sh builds it)"
    return None


class Container:
    """A working container of the image, run like a pod: read-only root, uid 1000, host network,
    writable host folders at :data:`WRITABLE` (buildah's own ``run`` has no read-only root)."""

    def __init__(self, image: str) -> None:
        self.id = subprocess.run(["buildah", "from", "--pull=never", image], check=True,
                                 capture_output=True, text=True).stdout.strip()
        self.root = subprocess.run(["buildah", "mount", self.id], check=True,
                                   capture_output=True, text=True).stdout.strip()
        config = json.loads(subprocess.run(
            ["buildah", "inspect", "--type", "container", self.id], check=True,
            capture_output=True, text=True).stdout)["OCIv1"]["config"]
        self.user = config.get("User", "")
        self.env = dict(item.split("=", 1) for item in config.get("Env", []))
        self.workdir = config.get("WorkingDir") or "/"
        for target in WRITABLE:  # mount points, in this container's own layer
            (Path(self.root) / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (Path(self.root) / "etc/hosts").touch()

    def run(self, argv: list[str], env: dict[str, str], scratch: Path,
            timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``argv`` in the image; ``scratch/<name>`` backs each writable path."""
        mounts = []
        for target in WRITABLE:
            source = scratch / (target.strip("/").replace("/", "_").lstrip(".") or "root")
            source.mkdir(parents=True, exist_ok=True)
            source.chmod(0o777)  # as an emptyDir
            mounts.append(f'mount --bind "{source}" "$R{target}"')
        # As a container runtime (and the kubelet) does: an /etc/hosts naming localhost and the
        # host name, which torchrun's rendezvous resolves. Images carry none.
        hosts = scratch / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
                         f"127.0.1.1 {socket.gethostname()}\n")
        mounts.append(f'mount --bind -o ro "{hosts}" "$R/etc/hosts"')
        variables = [f"{k}={v}" for k, v in {**self.env, **env}.items()]
        script = "\n".join([
            "set -e", 'R="$1"; shift',
            'mount --bind "$R" "$R"', 'mount -o remount,bind,ro "$R"',
            'mount -t proc proc "$R/proc"', 'mount --rbind /dev "$R/dev"',
            'mount -t tmpfs -o mode=1777 shm "$R/dev/shm"', *mounts,
            f'exec chroot --userspec={USER} "$R" /usr/bin/env -i "$@"',
        ])
        command = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                   "sh", "-c", script, "runner", self.root, *variables,
                   "sh", "-c", 'cd "$0" && exec "$@"', self.workdir, *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def remove(self) -> None:
        subprocess.run(["buildah", "umount", self.id], capture_output=True)
        subprocess.run(["buildah", "rm", self.id], capture_output=True)
