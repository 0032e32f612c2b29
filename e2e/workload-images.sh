#!/usr/bin/env bash
# Images for manifests/examples/workloads.yaml on the real node (e2e/node.sh), built here without
# Docker or a registry: a root filesystem of Debian's own packages (mmdebstrap, from the machine's
# apt sources, the packages only unpacked: no maintainer scripts) wrapped as an OCI archive
# (e2e/oci.py). They stand in for the images the example names, with what the example demands:
#   nginx  Debian's nginx, configured like nginxinc/nginx-unprivileged: no `user` directive, the pid
#          file and every temporary path under /tmp, the error log to stderr and the access log to
#          stdout, /etc/nginx/conf.d/*.conf included (a default server on 8080 until a ConfigMap
#          is mounted there); user 101:101 (nginx). Works with a read-only root filesystem and
#          only /tmp writable, as any user.
#   curl   Debian's curl; user 100:101 (curl_user), like curlimages/curl; writes nothing.
# Both have /bin/sh (dash) and coreutils (cat, md5sum, sleep; kill is the shell's), nothing else
# from Debian's essential set.
#
#   e2e/workload-images.sh build    build what is missing; prints `NAME ARCHIVE` per image
#   e2e/workload-images.sh import   build, then import into the running node's containerd
#   e2e/workload-images.sh workloads   print manifests/examples/workloads.yaml with only its two
#                                      image names pointed at these images (builds them if missing)
#
# The archives are cached outside the repository, keyed by this recipe (this script and oci.py)
# and the machine's Debian release: a changed recipe builds anew; a cached one is reused as it is
# (delete the directory to take newer package versions). Names: localhost/mtls-e2e/nginx:<nginx
# version>-debian<release>, localhost/mtls-e2e/curl:<curl version>-debian<release>; the full
# Debian version is the image's org.opencontainers.image.version label.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${MTLS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtls-operator}
. /etc/os-release
release=${VERSION_ID:?}
suite=${VERSION_CODENAME:?}
key=$(cat "$0" "$here/oci.py" | sha256sum | cut -c1-12)
out="$cache_root/workload-images/debian$release-$key"

wlog() { printf '[workload-images] %s\n' "$*" >&2; }

# The machine's own apt sources, as mmdebstrap takes them (each file pasted into the chroot's).
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    if [ -s "$f" ]; then echo "$f"; fi
  done
}

nginx_conf='# nginx unprivileged, with a read-only root filesystem (as nginxinc/nginx-unprivileged): no
# `user` (the master runs as whoever starts it), the pid file and temporary files under /tmp,
# logs to the container'"'"'s stderr/stdout.
worker_processes auto;
error_log stderr notice;
pid /tmp/nginx.pid;

events {
    worker_connections 1024;
}

http {
    client_body_temp_path /tmp/client_temp;
    proxy_temp_path       /tmp/proxy_temp;
    fastcgi_temp_path     /tmp/fastcgi_temp;
    uwsgi_temp_path       /tmp/uwsgi_temp;
    scgi_temp_path        /tmp/scgi_temp;

    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;
    access_log    /dev/stdout;
    sendfile      on;
    keepalive_timeout 65;

    include /etc/nginx/conf.d/*.conf;
}
'
nginx_default='server {
    listen 8080;
    location / {
        root  /usr/share/nginx/html;
        index index.html;
    }
}
'

# build_one NAME PACKAGE USER PASSWD GROUP CONFIG-JSON: the root filesystem of dash, coreutils and
# PACKAGE (with their dependencies), trimmed of what a container does not use, as $out/NAME.oci.tar.
build_one() {
  local name=$1 pkg=$2 passwd=$3 group=$4 config=$5
  [ -f "$out/$name.oci.tar" ] && return 0
  command -v mmdebstrap >/dev/null || {
    wlog "installing mmdebstrap"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap) >&2
  }
  local start=$SECONDS t; t=$(mktemp -d)
  mkdir -p "$out"
  # The extract hook runs before mmdebstrap's cleanup, while the downloaded packages are still
  # in the chroot's apt cache: their names and versions are the image's record of what it holds.
  mapfile -t sources < <(apt_sources)
  mmdebstrap --quiet --mode=root --variant=extract --include="dash,coreutils,$pkg" \
    --extract-hook="for d in \"\$1\"/var/cache/apt/archives/*.deb; do dpkg-deb --show \"\$d\"; done | sort > $t/packages" \
    "$suite" "$t/root" "${sources[@]}" >&2
  printf '%s' "$passwd" > "$t/root/etc/passwd"
  printf '%s' "$group" > "$t/root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$t/root/etc/nsswitch.conf"
  if [ "$pkg" = nginx ]; then
    printf '%s' "$nginx_conf" > "$t/root/etc/nginx/nginx.conf"
    printf '%s' "$nginx_default" > "$t/root/etc/nginx/conf.d/default.conf"
  fi
  local version; version=$(awk -v p="$pkg" '$1==p {print $2}' "$t/packages")
  [ -n "$version" ] || { wlog "no $pkg among the packages mmdebstrap fetched"; return 1; }
  local upstream=${version#*:}; upstream=${upstream%%-*}; upstream=${upstream%%+*}
  local image="localhost/mtls-e2e/$name:$upstream-debian$release"
  python3 - "$t" "$image" "$version" "$config" > "$t/spec.json" <<'PY'
import json, sys
t, image, version, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
config.setdefault("Env", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
config.setdefault("WorkingDir", "/")
config["Labels"] = {"org.opencontainers.image.version": version,
                    "org.opencontainers.image.description": "Debian packages: " +
                        ", ".join(" ".join(l.split()) for l in open(t + "/packages"))}
spec = {"name": image,
        "trees": [{"src": t + "/root", "dst": "/", "exclude": [
            # Devices are the runtime's; apt's and dpkg's state, the copied resolver and host
            # name, documentation and translations are of no use in a container.
            "dev/*", "etc/apt", "var/lib/apt", "var/cache/apt", "var/lib/dpkg", "etc/resolv.conf",
            "etc/hostname", "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
            "usr/share/lintian", "usr/share/bug"]}],
        "dirs": [{"dst": "/tmp", "mode": 0o1777}],
        "config": config}
print(json.dumps(spec))
PY
  python3 "$here/oci.py" build "$t/spec.json" "$out/$name.oci.tar" >/dev/null
  wlog "built $image ($(wc -l < "$t/packages") Debian packages, $(du -h "$out/$name.oci.tar" | cut -f1)) in $((SECONDS - start)) s"
  rm -rf "$t"
}

build() {
  build_one nginx nginx \
    $'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n' \
    $'root:x:0:\nnogroup:x:65534:\nnginx:x:101:\n' \
    '{"User": "101:101", "Cmd": ["nginx", "-g", "daemon off;"], "ExposedPorts": {"8080/tcp": {}}, "StopSignal": "SIGQUIT"}'
  build_one curl curl \
    $'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\ncurl_user:x:100:101:curl:/nonexistent:/bin/sh\n' \
    $'root:x:0:\nnogroup:x:65534:\ncurl_group:x:101:\n' \
    '{"User": "100:101", "Entrypoint": ["curl"], "Cmd": ["--version"]}'
  local a
  for a in "$out/nginx.oci.tar" "$out/curl.oci.tar"; do
    python3 - "$a" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as a:
    print(json.load(a.extractfile("index.json"))["manifests"][0]["annotations"]["io.containerd.image.name"], sys.argv[1])
PY
  done
}

case "${1:-build}" in
  build) build ;;
  import)
    names=$(build)
    # shellcheck disable=SC2046
    "$here/node.sh" import $(awk '{print $2}' <<<"$names")
    echo "$names"
    ;;
  workloads)
    names=$(build)
    nginx=$(awk '$1 ~ /\/nginx:/ {print $1}' <<<"$names")
    curl=$(awk '$1 ~ /\/curl:/ {print $1}' <<<"$names")
    sed -E -e "s#^( *image: )docker\.io/nginxinc/nginx-unprivileged:.*#\1$nginx#" \
      -e "s#^( *image: )docker\.io/curlimages/curl:.*#\1$curl#" "$(dirname "$here")/manifests/examples/workloads.yaml"
    ;;
  *) echo "usage: $0 build|import|workloads" >&2; exit 2 ;;
esac
