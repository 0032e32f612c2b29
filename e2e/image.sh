#!/usr/bin/env bash
# The operator's OCI image, built without Docker from the release binary (the one the Dockerfile
# builds: `cargo build --release --locked --bin mtls-operator`), on the same runtime contents as
# the Dockerfile's distroless cc-debian12 base, taken from this Debian 12 machine: the shared
# libraries the binary links (ldd: glibc, libgcc_s), CA certificates, /etc/passwd and /etc/group
# with the nonroot user 65532, /home/nonroot, /tmp; no shell, no package manager. The image's
# user, entrypoint, cmd, exposed port and labels are read from the Dockerfile, so the two
# cannot drift (and `check` verifies it).
#
#   e2e/image.sh build    build the binaries and target/images/mtls-operator-<version>.oci.tar (default)
#   e2e/image.sh package [BINARY]   only wrap an already built binary (default target/release/mtls-operator)
#   e2e/image.sh check    compare the archive's image config and files with the Dockerfile
#   e2e/image.sh import   build, check and import both images into the node's containerd (e2e/node.sh)
#
# Prints the archive path. The image is named localhost/mtls-operator:<version> (no registry:
# pods use imagePullPolicy IfNotPresent or Never). CARGO_TARGET_DIR is honoured.
#
# The same release build gives the end-to-end tests' workload, `mtls-probe` (e2e/probe), packaged
# on the same base as localhost/mtls-probe:<version> (target/images/mtls-probe-<version>.oci.tar;
# not an image to ship, so no Dockerfile: its config is written here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
target=${CARGO_TARGET_DIR:-$repo/target}
version=$(awk -F'"' '$1 ~ /^version *= */ {print $2; exit}' "$repo/Cargo.toml")
name=${MTLS_E2E_IMAGE:-localhost/mtls-operator:$version}
out="$target/images/mtls-operator-$version.oci.tar"
probe_name=localhost/mtls-probe:$version
probe_out="$target/images/mtls-probe-$version.oci.tar"

log() { printf '[image] %s\n' "$*" >&2; }

# The Dockerfile's final stage as the image config it produces (VERSION as --build-arg would set it).
dockerfile_contract() {
  python3 - "$repo/Dockerfile" "$version" <<'PY'
import json, re, shlex, sys
path, version = sys.argv[1], sys.argv[2]
lines, cur = [], ""
for raw in open(path):
    line = raw.rstrip("\n")
    if not cur and (line.lstrip().startswith("#") or not line.strip()):
        continue
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    lines.append((cur + line).strip())
    cur = ""
stage = []
for l in lines:
    if l.split()[0].upper() == "FROM":
        stage = []
    stage.append(l)
args = {"VERSION": version}
def subst(s):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), s)
config = {"Labels": {}, "ExposedPorts": {}}
for l in stage:
    word, _, rest = l.partition(" ")
    word = word.upper()
    if word == "ARG":
        k, _, v = rest.strip().partition("=")
        args.setdefault(k, v)
    elif word == "LABEL":
        for kv in shlex.split(rest):
            k, _, v = kv.partition("=")
            config["Labels"][k] = subst(v)
    elif word == "USER":
        config["User"] = subst(rest.strip())
    elif word == "EXPOSE":
        for p in rest.split():
            config["ExposedPorts"][p if "/" in p else p + "/tcp"] = {}
    elif word in ("ENTRYPOINT", "CMD"):
        config["Entrypoint" if word == "ENTRYPOINT" else "Cmd"] = json.loads(rest)
print(json.dumps(config, sort_keys=True))
PY
}

build() {
  local start=$SECONDS
  log "cargo build --release --locked --bin mtls-operator --bin mtls-probe (CARGO_TARGET_DIR=$target)"
  (cd "$repo" && CARGO_TARGET_DIR="$target" CARGO_INCREMENTAL=0 AWS_LC_SYS_USE_SYSTEM=0 \
    cargo build --release --locked --bin mtls-operator --bin mtls-probe)
  log "release build took $((SECONDS - start)) s"
  package
  dockerfile_contract | package_as "$target/release/mtls-probe" "$probe_name" "$probe_out" probe_contract
}

# The probe's image config, the operator's with the probe's entrypoint, port and title.
probe_contract() {
  python3 -c '
import json, sys
c = json.load(sys.stdin)
c["Entrypoint"], c["Cmd"], c["ExposedPorts"] = ["/usr/local/bin/mtls-probe"], ["--help"], {"8443/tcp": {}}
c["Labels"] = {k: v for k, v in c["Labels"].items() if k.endswith((".licenses", ".version"))}
c["Labels"]["org.opencontainers.image.title"] = "mtls-probe"
c["Labels"]["org.opencontainers.image.description"] = "mutual-TLS test workload of the mtls-operator end-to-end tests"
print(json.dumps(c, sort_keys=True))'
}

package() {
  package_as "${1:-$target/release/mtls-operator}" "$name" "$out" dockerfile_contract
}

# Wraps BINARY as image NAME into archive OUT, with the image config CONTRACT prints (it reads
# the Dockerfile's contract on stdin when it needs it).
package_as() { # binary name out contract
  local binary=$1 name=$2 out=$3 contract=$4
  "$binary" --version >&2
  local start=$SECONDS
  mkdir -p "$target/images"
  local t; t=$(mktemp -d)
  "$contract" > "$t/contract.json"
  # The shared libraries the binary needs, from this Debian 12 (glibc 2.36, as distroless cc-debian12).
  ldd "$binary" | awk '/=>/ {print $1, $3} !/=>/ && $1 ~ /^\// {print $1, $1}' > "$t/libs"
  python3 - "$t" "$binary" "$name" <<'PY' > "$t/spec.json"
import json, os, sys
t, binary, name = sys.argv[1:4]
contract = json.load(open(t + "/contract.json"))
files = [{"src": binary, "dst": contract["Entrypoint"][0], "mode": 0o755}]
for line in open(t + "/libs"):
    soname, path = line.split()
    if soname.startswith("linux-vdso"):
        continue
    real = os.path.realpath(path)
    # The loader at the path the binary names (PT_INTERP), the libraries where glibc's built-in
    # search path finds them.
    dst = path if soname.startswith("/") else "/lib/x86_64-linux-gnu/" + os.path.basename(soname)
    files.append({"src": real, "dst": dst, "mode": 0o755})
files.append({"src": os.path.realpath("/etc/ssl/certs/ca-certificates.crt"),
              "dst": "/etc/ssl/certs/ca-certificates.crt", "mode": 0o644})
os_release = open("/etc/os-release").read()
spec = {
    "name": name,
    "files": files,
    "dirs": [{"dst": "/tmp", "mode": 0o1777},
             {"dst": "/home/nonroot", "mode": 0o700, "uid": 65532, "gid": 65532},
             {"dst": "/root", "mode": 0o700}],
    "contents": [
        {"dst": "/etc/passwd", "text": "root:x:0:0:root:/root:/sbin/nologin\n"
                                       "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
                                       "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"},
        {"dst": "/etc/group", "text": "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"},
        {"dst": "/etc/nsswitch.conf", "text": "passwd: files\ngroup: files\nhosts: files dns\n"},
        {"dst": "/etc/os-release", "text": os_release},
    ],
    "config": {
        "User": contract["User"],
        "Entrypoint": contract["Entrypoint"],
        "Cmd": contract["Cmd"],
        "ExposedPorts": contract["ExposedPorts"],
        "Labels": contract["Labels"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        "WorkingDir": "/home/nonroot",
    },
}
print(json.dumps(spec))
PY
  python3 "$here/oci.py" build "$t/spec.json" "$out" > "$t/digest"
  log "packaged $out ($name, $(cat "$t/digest"), $(du -h "$out" | cut -f1)) in $((SECONDS - start)) s"
  rm -rf "$t"
}

check() {
  [ -f "$out" ] || { log "no $out: run e2e/image.sh build"; return 1; }
  local t; t=$(mktemp -d)
  dockerfile_contract > "$t/contract.json"
  python3 "$here/oci.py" config "$out" > "$t/config.json"
  python3 "$here/oci.py" files "$out" > "$t/files"
  local rc=0
  python3 - "$t" "$repo/charts/mtls-operator/values.yaml" <<'PY' || rc=1
import json, re, sys
t, values = sys.argv[1], sys.argv[2]
want = json.load(open(t + "/contract.json"))
got = json.load(open(t + "/config.json"))["config"]
files = [l.split(None, 3) for l in open(t + "/files").read().splitlines()]
paths = {f[3].split(" -> ")[0]: f for f in files}
errors = []
for key in ("User", "Entrypoint", "Cmd", "ExposedPorts", "Labels"):
    if got.get(key) != want.get(key):
        errors.append(f"{key}: image {got.get(key)!r} != Dockerfile {want.get(key)!r}")
if want.get("User", "").split(":")[0] in ("", "0", "root"):
    errors.append("the Dockerfile's user is root")
entry = want["Entrypoint"][0]
if entry not in paths or paths[entry][0] != "f":
    errors.append(f"entrypoint {entry} is not a file in the image")
for shell in ("/bin/sh", "/bin/bash", "/usr/bin/sh", "/bin/busybox"):
    if shell in paths:
        errors.append(f"the image has a shell: {shell}")
if "/lib64/ld-linux-x86-64.so.2" not in paths:
    errors.append("the image has no ELF loader /lib64/ld-linux-x86-64.so.2")
if not any(p.endswith("/ca-certificates.crt") for p in paths):
    errors.append("the image has no CA certificates")
uid, gid = want["User"].split(":")
passwd = [l for l in open(t + "/files") if " /etc/passwd" in l]
if not passwd:
    errors.append("no /etc/passwd")
# Nothing the non-root user could write but /tmp and its home (read-only root filesystem works
# because the binary writes nothing).
for kind, mode, owner, path in files:
    if owner != "0:0" and not path.startswith("/home/nonroot"):
        errors.append(f"{path} is owned by {owner}")
# The chart runs the image as the same user.
v = open(values).read()
for field, want_id in (("runAsUser", uid), ("runAsGroup", gid)):
    found = set(re.findall(rf"^\s*{field}:\s*(\d+)", v, re.M))
    if found != {want_id}:
        errors.append(f"chart values {field} {sorted(found)} != image {want_id}")
if errors:
    print("image contract differs from the Dockerfile:\n  " + "\n  ".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"image contract matches the Dockerfile: user {want['User']}, entrypoint {want['Entrypoint']}, "
      f"cmd {want['Cmd']}, ports {sorted(want['ExposedPorts'])}, {len(want['Labels'])} labels, no shell, "
      f"{len(files)} entries", file=sys.stderr)
PY
  rm -rf "$t"
  return $rc
}

case "${1:-build}" in
  build) build; echo "$out" ;;
  package) package "${2:-}"; echo "$out" ;;
  check) check ;;
  import)
    build; check; "$here/node.sh" import "$out" "$probe_out"
    log "imported $name and $probe_name into the node"; echo "$out" ;;
  *) echo "usage: $0 build|check|import" >&2; exit 2 ;;
esac
