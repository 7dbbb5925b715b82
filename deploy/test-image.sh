#!/usr/bin/env bash
# Builds the real Dockerfile with buildah (no Docker engine, no registry) and proves the image
# works: the server inside it answers health, a TopKSoftmax query per default model and a
# /metrics scrape from the host, and runs as the non-root user.
#
#   deploy/test-image.sh             full test (as root)
#   deploy/test-image.sh --base-only only make (or reuse) the cached base image
#
# Steps:
#   1. Base image. The Dockerfile starts FROM debian:bookworm-slim, which no reachable registry
#      serves here, so it is made locally: debootstrap --variant=minbase from the mirror in this
#      machine's apt sources, slimmed like the official image, given the same apt sources and
#      Acquire settings, and committed as docker.io/library/debian:bookworm-slim (what the short
#      name resolves to). The root filesystem tarball is cached in $ADASOFTMAX_IMAGE_CACHE
#      (default /var/cache/adasoftmax-image) and the image stays in buildah's store, so later
#      runs skip this step.
#   2. `buildah build --isolation chroot --layers` of the Dockerfile, unchanged. Layers are
#      cached: the dependency layer is reused until deploy/install-deps.sh changes, and the
#      compiler cache (a RUN cache mount) keeps rebuilds of changed sources short.
#   3. The server runs in a container from the image (`buildah run --isolation chroot`, host
#      network) on free loopback ports; the host's build/bin/adasoftmax (built here if absent)
#      checks health, queries "ocr" and "lm", and curl scrapes /metrics. The server process's
#      Uid (from /proc) must be the image's non-root user; a SIGHUP reloads and it keeps serving.
#   4. The container is stopped and removed; image size and timings are printed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache_dir="${ADASOFTMAX_IMAGE_CACHE:-/var/cache/adasoftmax-image}"
base_name="docker.io/library/debian:bookworm-slim"
image="${ADASOFTMAX_IMAGE:-localhost/adasoftmax:test}"
build_image="${image%:*}-build:${image##*:}"
suite="bookworm"

log() { echo "test-image: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s; }

[ "$(id -u)" -eq 0 ] || die "must run as root (buildah --isolation chroot and debootstrap need it)"
t_start=$(now)

# ---------------------------------------------------------------------------------------------
# The machine's Debian mirrors, read from its apt sources (deb822 .sources and one-line .list).
# Prints "URI SUITE" pairs for every enabled deb entry.
apt_source_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -e 's/#.*//' "$f" | awk '$1 == "deb" {
        i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        print $i, $(i + 1) }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # Paragraphs separated by blank lines; keys are case-insensitive.
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled !~ /^no$/)
          for (u = 1; u <= nu; u++) for (s = 1; s <= ns; s++) print uris[u], suites[s]
        types = ""; enabled = ""; nu = 0; ns = 0 }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:"   { types = ""; for (i = 2; i <= NF; i++) types = types " " $i; sub(/^ /, "", types) }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      tolower($1) == "uris:"    { nu = 0; for (i = 2; i <= NF; i++) uris[++nu] = $i }
      tolower($1) == "suites:"  { ns = 0; for (i = 2; i <= NF; i++) suites[++ns] = $i }
      END { flush() }' "$f"
  done
}

mirror_for_suite() {  # the first URI serving exactly suite $1
  apt_source_entries | awk -v s="$1" '$2 == s { sub(/\/$/, "", $1); print $1; exit }'
}

make_base_rootfs() {  # $1: target tarball
  local tarball="$1" mirror security rootfs
  mirror="$(mirror_for_suite "$suite")"
  [ -n "$mirror" ] || die "no 'deb ... $suite' entry in this machine's apt sources"
  security="$(mirror_for_suite "$suite-security")"
  command -v debootstrap >/dev/null || die "debootstrap missing: run deploy/install-deps.sh"
  mkdir -p "$cache_dir"
  rootfs="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
  log "debootstrap --variant=minbase $suite from $mirror (a few minutes, once)"
  local t0; t0=$(now)
  if ! debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
      "$suite" "$rootfs" "$mirror" >"$cache_dir/debootstrap.log" 2>&1; then
    tail -n 30 "$cache_dir/debootstrap.log" >&2
    rm -rf "$rootfs"
    die "debootstrap failed (log: $cache_dir/debootstrap.log)"
  fi
  log "debootstrap took $(( $(now) - t0 ))s"

  # The same apt sources as the machine (Debian entries), so apt-get in the Dockerfile reaches
  # the same mirror, and the machine's Acquire settings (proxy, validity checks of snapshots).
  rm -f "$rootfs/etc/apt/sources.list"
  {
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: $suite $suite-updates"
    echo "Components: main"
    echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    if [ -n "$security" ]; then
      echo
      echo "Types: deb"
      echo "URIs: $security"
      echo "Suites: $suite-security"
      echo "Components: main"
      echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"
  # Only offer bookworm-updates if the machine has it too.
  if [ -z "$(mirror_for_suite "$suite-updates")" ]; then
    sed -i "s/^Suites: $suite $suite-updates\$/Suites: $suite/" "$rootfs/etc/apt/sources.list.d/debian.sources"
  fi
  # Network settings only (proxies, retries, validity checks of snapshot mirrors), in valid syntax.
  apt-config dump Acquire | grep -E '^Acquire::((https?|ftp)::|(Check-Valid-Until|Check-Date|Retries|ForceIPv4|ForceIPv6) )' \
    >"$rootfs/etc/apt/apt.conf.d/90host-acquire" || true

  # Slim like the official debian:*-slim: no docs, man pages or translations, no apt caches.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* 2>/dev/null || true
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache 2>/dev/null || true
  # The build host's identity does not belong in the image.
  : >"$rootfs/etc/hostname"
  rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hosts"

  tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  log "base root filesystem cached: $tarball ($(du -h "$tarball" | cut -f1))"
}

ensure_base_image() {
  if buildah inspect --type image "$base_name" >/dev/null 2>&1; then
    log "base image $base_name present (cached)"
    return
  fi
  local tarball="$cache_dir/debian-$suite-slim-rootfs.tar"
  [ -f "$tarball" ] || make_base_rootfs "$tarball"
  log "importing $tarball as $base_name"
  local ctr
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash --os linux --arch "$(dpkg --print-architecture)" "$ctr"
  buildah commit --quiet --rm "$ctr" "$base_name" >/dev/null
}

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Every process whose parent chain reaches $1 (the buildah run process).
descendants() {
  local root="$1" p pp
  local -A parent=()
  for p in /proc/[0-9]*; do
    pp=$(awk '{ sub(/^.*\) /, ""); print $2 }' "$p/stat" 2>/dev/null) || continue
    [ -n "$pp" ] && parent[${p#/proc/}]=$pp
  done
  for p in "${!parent[@]}"; do
    pp=$p
    while [ -n "$pp" ] && [ "$pp" != 0 ] && [ "$pp" != 1 ]; do
      pp=${parent[$pp]:-}
      if [ "$pp" = "$root" ]; then echo "$p"; break; fi
    done
  done
}

ctr=""
run_pid=""
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then wait "$run_pid" 2>/dev/null || true; fi
  if [ -n "$ctr" ]; then
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# 1. Base image.
t0=$(now)
ensure_base_image
t_base=$(( $(now) - t0 ))
log "base image ready in ${t_base}s"
if [ "${1:-}" = "--base-only" ]; then
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 2. The real Dockerfile, unchanged. --pull=never: only the local base image is used.
# --format docker keeps HEALTHCHECK, which the OCI image format has no field for.
# The build stage is tagged too ($build_image), so that its layers (the dependency layer above
# all) stay named and cached; the images these tags named before are removed once the new
# build succeeds, with their no longer used parent layers, so reruns do not fill the disk.
log "buildah build of $repo/Dockerfile -> $image"
t0=$(now)
build_log="$(mktemp /tmp/adasoftmax-image-build.XXXXXX.log)"
image_ids() { local t; for t in "$build_image" "$image"; do buildah images -q --no-trunc "$t" 2>/dev/null || true; done | sort -u; }
previous=$(image_ids)
for target in build ""; do
  if [ -n "$target" ]; then tag="$build_image"; target_args=(--target "$target"); else tag="$image"; target_args=(); fi
  if ! buildah build --isolation chroot --layers --force-rm --pull=never --format docker \
      "${target_args[@]}" -f "$repo/Dockerfile" -t "$tag" "$repo" >>"$build_log" 2>&1; then
    tail -n 60 "$build_log" >&2
    die "image build failed (log: $build_log)"
  fi
done
t_build=$(( $(now) - t0 ))
cached=$(grep -c -- '--> Using cache' "$build_log" || true)
log "image built in ${t_build}s ($cached steps from the layer cache)"
current=$(image_ids)
for id in $previous; do
  grep -qx "$id" <<<"$current" || buildah rmi "$id" >/dev/null 2>&1 || true
done

# The image's configuration is what the Dockerfile promises.
image_json="$(buildah inspect --type image "$image")"
image_config() {  # $1: a field of the image's Docker config; lists print one item a line
  /usr/bin/python3 -c '
import json, sys
v = json.loads(sys.argv[1])["Docker"]["config"].get(sys.argv[2])
if isinstance(v, dict) and "Test" in v: v = v["Test"]
if isinstance(v, dict): v = sorted(v)
print("\n".join(v) if isinstance(v, list) else (v or ""))' "$image_json" "$1"
}
cfg_user=$(image_config User)
cfg_hc=$(image_config Healthcheck | tr '\n' ' ')
mapfile -t entrypoint < <(image_config Entrypoint; image_config Cmd | sed '/^$/d')
cfg_ep="${entrypoint[*]}"
cfg_ports=$(image_config ExposedPorts | tr '\n' ' ')
uid="${cfg_user%%:*}"
[[ "$uid" =~ ^[0-9]+$ ]] && [ "$uid" -ne 0 ] || die "image USER '$cfg_user' is not a numeric non-root user"
[[ "$cfg_hc" == *"adasoftmax health"* ]] || die "image has no HEALTHCHECK running adasoftmax health ('$cfg_hc')"
[[ "$cfg_ep" == *adasoftmax-server* ]] || die "image entrypoint is '$cfg_ep', not the server"
[[ "$cfg_ports" == *50051/tcp* && "$cfg_ports" == *9464/tcp* ]] || die "image exposes '$cfg_ports'"
log "image config: user $cfg_user, entrypoint $cfg_ep, ports $cfg_ports, healthcheck '$cfg_hc'"

# ---------------------------------------------------------------------------------------------
# 3. Run the server in a container from the image, on loopback of the host network.
client="$repo/build/bin/adasoftmax"
if [ ! -x "$client" ]; then
  log "building the host's adasoftmax client (build/bin/adasoftmax)"
  cmake -S "$repo" -B "$repo/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$repo/build" -j"$(nproc)" --target adasoftmax >/dev/null
fi

ctr="$(buildah from --pull=never "$image")"
# The image's own cache dir must be writable by its user (the server generates the LM head there).
buildah run --isolation chroot "$ctr" -- sh -c 'f="$ADASOFTMAX_CACHE_DIR/.write-test" && : >"$f" && rm "$f"' \
  || die "the image's cache dir is not writable by user $cfg_user"
# Runs reuse the generated LM head through a cache mount owned by the image's user.
model_cache="$cache_dir/model-cache"
mkdir -p "$model_cache"
chown "$uid:$uid" "$model_cache"
marker="$(mktemp)"
sleep 1

grpc_port=$(free_port)
metrics_port=$(free_port)
while [ "$metrics_port" = "$grpc_port" ]; do metrics_port=$(free_port); done
server_log="$(mktemp /tmp/adasoftmax-image-server.XXXXXX.log)"
log "starting the image's entrypoint ($cfg_ep) on 127.0.0.1:$grpc_port, metrics 127.0.0.1:$metrics_port"
t0=$(now)
buildah run --isolation chroot --network host \
  --env "ADASOFTMAX_ADDRESS=127.0.0.1:$grpc_port" \
  --env "ADASOFTMAX_METRICS_ADDRESS=127.0.0.1:$metrics_port" \
  --volume "$model_cache:/var/cache/adasoftmax" \
  "$ctr" -- "${entrypoint[@]}" >"$server_log" 2>&1 &
run_pid=$!

# Wait until the server reports SERVING (the first start generates the ~150 MB LM head).
ready=""
for _ in $(seq 1 600); do
  if ! kill -0 "$run_pid" 2>/dev/null; then
    cat "$server_log" >&2
    die "the server exited before becoming healthy"
  fi
  if "$client" health --target "127.0.0.1:$grpc_port" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || { cat "$server_log" >&2; die "no SERVING within 300s"; }
t_ready=$(( $(now) - t0 ))
log "health: SERVING after ${t_ready}s"

# The image's own HEALTHCHECK command, run inside the container as Docker would run it.
mapfile -t hc < <(image_config Healthcheck)
[ "${hc[0]:-}" = CMD-SHELL ] || die "unexpected HEALTHCHECK form: ${hc[*]}"
buildah run --isolation chroot --network host --env "ADASOFTMAX_ADDRESS=127.0.0.1:$grpc_port" \
  "$ctr" -- /bin/sh -c "${hc[1]}" || die "the image's HEALTHCHECK fails against a SERVING server"
log "the image's HEALTHCHECK passes"

for p in $(descendants "$run_pid"); do
  if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "adasoftmax-serv" ]; then server_pid=$p; fi
done
[ -n "$server_pid" ] || die "cannot find the server process under buildah run (pid $run_pid)"
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$server_pid/status")
gids=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$server_pid/status")
[ "$uids" = "$uid $uid $uid $uid" ] || die "server process $server_pid runs with Uid '$uids', expected $uid"
log "server process $server_pid runs as Uid $uids / Gid $gids (non-root)"

# A TopKSoftmax query against each default model, from the host.
ocr_vector=$(/usr/bin/python3 -c '
import sys
import numpy as np
print(",".join(f"{x:.6g}" for x in np.load(sys.argv[1])[0]))' "$repo/tests/data/ppocrv4-rec/queries.npy")
lm_vector=$(/usr/bin/python3 -c '
import random
r = random.Random(7)
print(",".join(f"{r.gauss(0, 1):.5f}" for _ in range(768)))')
for model in ocr lm; do
  if [ "$model" = ocr ]; then vec="$ocr_vector"; else vec="$lm_vector"; fi
  out=$("$client" query --target "127.0.0.1:$grpc_port" --model "$model" --vector "$vec" --k 5 --json) \
    || die "query against $model failed"
  summary=$(/usr/bin/python3 -c '
import json, sys
r = json.loads(sys.argv[1])
while isinstance(r, list) or "indices" not in r:
    r = r[0] if isinstance(r, list) else r["results"]
assert len(r["indices"]) == 5, r
labels = r.get("labels") or []
print("top-5 indices", r["indices"], ("labels " + repr(labels)) if labels else "", "samples", r.get("samples"))
' "$out") || die "unexpected answer from $model: $out"
  log "query $model: $summary"
done

# The metrics endpoint, scraped from the host.
metrics=$(curl -fsS --max-time 10 "http://127.0.0.1:$metrics_port/metrics") || die "cannot scrape /metrics"
for want in 'adasoftmax_requests_total{' 'adasoftmax_samples_per_query_bucket{' \
    'adasoftmax_model_info{' 'adasoftmax_batch_size_count{' 'adasoftmax_request_duration_seconds_count{'; do
  grep -qF "$want" <<<"$metrics" || die "/metrics lacks $want"
done
for model in ocr lm; do
  grep -E '^adasoftmax_requests_total\{' <<<"$metrics" | grep -F "model=\"$model\"" | grep -F 'code="OK"' \
    | grep -qvE ' 0$' || die "/metrics counts no OK request for $model"
done
log "/metrics: $(grep -c '^adasoftmax_' <<<"$metrics") adasoftmax samples; OK requests counted for ocr and lm"

# The memory the Kubernetes manifests give the server holds the default repository.
rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status")
limit_bytes=$(/usr/bin/python3 -c '
import sys, yaml
units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "Deployment":
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "adasoftmax":
                q = str(c["resources"]["limits"]["memory"])
                print(int(float(q[:-2]) * units[q[-2:]]) if q[-2:] in units else int(q))
' "$repo/deploy/k8s/standalone.yaml")
[ $(( rss_kib * 1024 )) -lt "$limit_bytes" ] \
  || die "server RSS $(( rss_kib / 1024 )) MiB exceeds the manifests' memory limit $(( limit_bytes / 1048576 )) MiB"
log "server RSS $(( rss_kib / 1024 )) MiB, within the manifests' memory limit of $(( limit_bytes / 1048576 )) MiB"

# SIGHUP reloads the repository (unchanged here) while serving: the server neither exits nor
# stops answering.
kill -HUP "$server_pid"
for _ in $(seq 1 100); do grep -q "reload done" "$server_log" && break; sleep 0.1; done
grep -q "reload done" "$server_log" || { tail -n 20 "$server_log" >&2; die "no 'reload done' after SIGHUP"; }
"$client" health --target "127.0.0.1:$grpc_port" >/dev/null || die "not SERVING after SIGHUP"
log "SIGHUP: the repository reloaded, still SERVING"

# ---------------------------------------------------------------------------------------------
# 4. Stop (SIGTERM drains and exits 0) and clean up.
kill -TERM "$server_pid"
rc=0
wait "$run_pid" || rc=$?
run_pid=""
server_pid=""
[ "$rc" -eq 0 ] || { tail -n 20 "$server_log" >&2; die "server exited with status $rc after SIGTERM"; }
log "SIGTERM: the server drained and exited 0"

# The server wrote nothing outside its cache dir and /tmp (so readOnlyRootFilesystem works).
mnt="$(buildah mount "$ctr")"
written=$(find "$mnt" -xdev -type f -newer "$marker" 2>/dev/null | sed "s#^$mnt##" \
  | grep -vE '^/(tmp|var/cache/adasoftmax)/|^/etc/(hosts|resolv\.conf|hostname)$|^/run/' || true)
buildah umount "$ctr" >/dev/null
rm -f "$marker"
[ -z "$written" ] || die "the server wrote into the image's root filesystem: $written"
buildah rm "$ctr" >/dev/null
ctr=""

rm -f "$build_log" "$server_log"
size=$(buildah images --format '{{.Size}}' --filter "reference=$image" | head -n 1)
log "PASS: image $image, size $size; base ${t_base}s, build ${t_build}s, ready ${t_ready}s, total $(( $(now) - t_start ))s"
echo "image-test: 1 passed, 0 failed"
