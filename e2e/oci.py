#!/usr/bin/env python3
"""Builds and inspects OCI image archives without Docker (standard library only).

  oci.py build SPEC.json OUT.tar     one-layer image from a spec (below); prints the manifest digest
  oci.py config ARCHIVE              prints the image config (JSON) of the archive's only image
  oci.py files ARCHIVE               lists the layer's entries: type mode uid:gid path [-> target]

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) as
`ctr images import` and `skopeo copy oci-archive:...` read it. The layer is a gzip'd tar whose
entries are sorted, owned by the uid/gid the spec says and dated at the spec's `created` (default
the epoch), so the same inputs give the same digests.

Spec:
  {"name": "localhost/x:1",                       # io.containerd.image.name of the manifest
   "created": "1970-01-01T00:00:00Z",
   "files":    [{"src": "/host/path", "dst": "/in/image", "mode": 493, "uid": 0, "gid": 0}],
   "contents": [{"dst": "/etc/passwd", "text": "...", "mode": 420}],
   "dirs":     [{"dst": "/tmp", "mode": 1023, "uid": 0, "gid": 0}],
   "symlinks": [{"dst": "/lib64", "target": "usr/lib64"}],
   "trees":    [{"src": "/host/rootfs", "dst": "/", "exclude": ["dev/*", "usr/share/doc"]}],
   "config":   {"User": "65532:65532", "Entrypoint": [...], "Cmd": [...], ...}}
A tree is a whole directory taken as it is (directories, regular files, symlinks, with their modes
and owners; a hard link becomes a copy; devices, sockets and FIFOs are left out), before the other
entries, which replace what it has at the same path. `exclude` holds fnmatch patterns of paths
relative to the tree (an excluded directory's contents go too).
Parent directories that are not listed are added as 0755 root:root.
"""
import fnmatch
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from datetime import datetime, timezone


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(spec, mtime):
    entries = {}  # path (no leading slash) -> TarInfo + data

    def add(path, info, data=None):
        path = path.strip("/")
        info.name = path
        info.mtime = mtime
        info.uname = info.gname = ""
        entries[path] = (info, data)
        parent = os.path.dirname(path)
        while parent and parent not in entries:
            d = tarfile.TarInfo(parent)
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, mtime
            d.uname = d.gname = ""
            entries[parent] = (d, None)
            parent = os.path.dirname(parent)

    for t in spec.get("trees", []):
        root, dst, exclude = t["src"].rstrip("/"), t.get("dst", "/"), t.get("exclude", [])
        for top, dirs, names in os.walk(root):
            rel_top = os.path.relpath(top, root)
            for name in sorted(dirs + names):
                rel = os.path.normpath(os.path.join(rel_top, name))
                if any(fnmatch.fnmatchcase(rel, pat) for pat in exclude):
                    if name in dirs:
                        dirs.remove(name)
                    continue
                st = os.lstat(os.path.join(top, name))
                info = tarfile.TarInfo()
                info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
                data = None
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(os.path.join(top, name))
                elif stat.S_ISREG(st.st_mode):
                    with open(os.path.join(top, name), "rb") as fh:
                        data = fh.read()
                    info.size = len(data)
                else:
                    continue
                add(os.path.join(dst, rel), info, data)
    for d in spec.get("dirs", []):
        info = tarfile.TarInfo()
        info.type, info.mode = tarfile.DIRTYPE, d.get("mode", 0o755)
        info.uid, info.gid = d.get("uid", 0), d.get("gid", 0)
        add(d["dst"], info)
    for f in spec.get("files", []):
        with open(f["src"], "rb") as fh:
            data = fh.read()
        info = tarfile.TarInfo()
        info.size = len(data)
        info.mode = f.get("mode", os.stat(f["src"]).st_mode & 0o7777)
        info.uid, info.gid = f.get("uid", 0), f.get("gid", 0)
        add(f["dst"], info, data)
    for c in spec.get("contents", []):
        data = c["text"].encode()
        info = tarfile.TarInfo()
        info.size, info.mode = len(data), c.get("mode", 0o644)
        info.uid, info.gid = c.get("uid", 0), c.get("gid", 0)
        add(c["dst"], info, data)
    for s in spec.get("symlinks", []):
        info = tarfile.TarInfo()
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, s["target"], 0o777
        add(s["dst"], info)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            info, data = entries[path]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def build(spec_path, out):
    with open(spec_path) as fh:
        spec = json.load(fh)
    created = spec.get("created", "1970-01-01T00:00:00Z")
    mtime = int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
    tar = layer_tar(spec, mtime)
    gz = gzip.compress(tar, compresslevel=6, mtime=mtime)
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": spec.get("config", {}),
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        "history": [{"created": created, "created_by": "e2e/oci.py " + os.path.basename(spec_path)}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(gz), "size": len(gz)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    name = spec["name"]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": manifest["mediaType"], "digest": sha256(manifest_bytes),
                       "size": len(manifest_bytes),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": tag}}],
    }
    blobs = [config_bytes, manifest_bytes, gz]
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as arch:
        def put(path, data):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            arch.addfile(info, io.BytesIO(data))
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            arch.addfile(info)
        for blob in blobs:
            put("blobs/sha256/" + sha256(blob)[7:], blob)
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    os.replace(tmp, out)
    print(sha256(manifest_bytes))


def read_image(archive):
    with tarfile.open(archive) as arch:
        def blob(digest):
            return arch.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()
        index = json.loads(arch.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layers = [blob(layer["digest"]) for layer in manifest["layers"]]
    return config, layers


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "build" and len(sys.argv) == 4:
        build(sys.argv[2], sys.argv[3])
    elif cmd == "config" and len(sys.argv) == 3:
        config, _ = read_image(sys.argv[2])
        print(json.dumps(config, indent=2, sort_keys=True))
    elif cmd == "files" and len(sys.argv) == 3:
        _, layers = read_image(sys.argv[2])
        for layer in layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
                for m in tar.getmembers():
                    kind = "d" if m.isdir() else "l" if m.issym() else "f"
                    link = " -> " + m.linkname if m.issym() else ""
                    print(f"{kind} {m.mode:04o} {m.uid}:{m.gid} /{m.name}{link}")
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
