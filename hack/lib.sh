# Sourced by the hack/ scripts: the build cache, logging, the build lock, the "already built"
# check of a binary built from Go modules, cache keys of image archives, and importing an archive
# into the local cluster's node.
#
# Sets CACHE_ROOT (${CAIRN_CACHE:-~/.cache/cairn}) and LOG_TAG (the script's file name without .sh,
# e.g. build-minio). Cache paths, lock files and keys are the ones each script computes itself.

CACHE_ROOT="${CAIRN_CACHE:-$HOME/.cache/cairn}"
LOG_TAG="$(basename "$0" .sh)"

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# require_tools TOOL...: stop with a clear message when one is not on PATH.
require_tools() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || die "missing $t"; done
}

# short_sha: the first 16 hex digits of the SHA-256 of stdin, the form of every image cache key.
short_sha() { sha256sum | cut -c1-16; }

# lock_until_exit FILE: wait for, then hold, an exclusive lock on FILE until the script exits.
# Test fixtures and CI may run the same build from several processes: one builds, the others wait.
lock_until_exit() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  flock 9
}

# build_binary_once BIN BUILD [--print-bin]: the whole command line of a script that builds one
# binary. Prints BIN; when it is not executable yet, first runs `BUILD DIR` under the lock
# $CACHE_ROOT/.$LOG_TAG.lock, where DIR is a fresh directory in the cache in which BUILD leaves the
# binary under BIN's file name; it is moved to BIN only when complete. --print-bin prints BIN and
# builds nothing.
build_binary_once() {
  local bin=$1 build=$2 name start
  name="$(basename "$bin")"
  case "${3:-}" in
    --print-bin) echo "$bin"; return 0 ;;
    "") ;;
    *) echo "usage: $0 [--print-bin]" >&2; exit 2 ;;
  esac
  [[ -x "$bin" ]] || lock_until_exit "$CACHE_ROOT/.$LOG_TAG.lock"
  if [[ -x "$bin" ]]; then
    log "present: $bin"
    echo "$bin"
    return 0
  fi
  BUILD_DIR="$(mktemp -d "$CACHE_ROOT/.$LOG_TAG-XXXXXX")"
  trap 'rm -rf "$BUILD_DIR"' EXIT
  start=$SECONDS
  "$build" "$BUILD_DIR"
  [[ -x "$BUILD_DIR/$name" ]] || die "the build left no $name in $BUILD_DIR"
  mkdir -p "$(dirname "$bin")"
  mv -f "$BUILD_DIR/$name" "$bin"
  log "built in $((SECONDS - start))s: $bin"
  echo "$bin"
}

# debian_mirror SUITE: the Debian mirror the host's apt uses for SUITE, if its sources name one.
debian_mirror() {
  awk '/^URIs:/ {u=$2} /^Suites:/ && / '"$1"'( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources \
    2>/dev/null || true
}

# archive_is_current ARCHIVE KEY: whether ARCHIVE and its manifest digest (ARCHIVE.digest) are
# there and were built for KEY (ARCHIVE.key, written last by seal_archive).
archive_is_current() {
  [[ -f "$1" && -f "$1.digest" && "$(cat "$1.key" 2>/dev/null)" == "$2" ]]
}

# seal_archive ARCHIVE DIGEST_FILE KEY: record the manifest digest of the finished ARCHIVE and
# then the key it was built for.
seal_archive() {
  cp "$2" "$1.digest"
  echo "$3" >"$1.key"
}

# import_archive ARCHIVE NAME: import an OCI archive into the local cluster's containerd unless
# the node already holds its manifest (ARCHIVE.digest), unpacked. NAME is one of the references the
# archive carries, used to see what the node has. An import whose unpack fails (containerd's garbage
# collector can take a shared parent layer's snapshot away mid-import) is tried once more. Does
# nothing when the caller set DO_IMPORT=0 (--no-import).
import_archive() {
  [[ $DO_IMPORT -eq 1 ]] || return 0
  local archive="$1" name="$2" want t1=$SECONDS
  local sock="${CAIRN_CLUSTER_DIR:-$CACHE_ROOT/cluster}/containerd/containerd.sock"
  [[ -S "$sock" ]] || die "the cluster's containerd is not running ($sock); run hack/cluster.sh up or pass --no-import"
  want="$(cat "$archive.digest")"
  if [[ "$(node_image "$sock" "$name")" == "$want true" ]]; then
    log "$name ($want) already in the node"
    return 0
  fi
  if ! ctr --address "$sock" --namespace k8s.io images import "$archive" >/dev/null ||
     [[ "$(node_image "$sock" "$name")" != "$want true" ]]; then
    log "import of $archive did not leave $name unpacked; importing it again"
    ctr --address "$sock" --namespace k8s.io images import "$archive" >/dev/null
    [[ "$(node_image "$sock" "$name")" == "$want true" ]] || die "$name is not unpacked in the node after two imports"
  fi
  log "imported $archive into the node in $((SECONDS - t1))s"
}

# node_image SOCKET NAME: "<manifest digest> <unpacked: true|false>" of NAME in the node's containerd.
node_image() {
  ctr --address "$1" --namespace k8s.io images check "name==$2" 2>/dev/null | awk 'NR > 1 {print $3, $NF}'
}

# go_install_logged GOBIN LDFLAGS PACKAGE@VERSION BINARY: `go install` into GOBIN with the whole log in
# $LOG and a line every 100 compiled packages on stderr; exits with the log's tail when it fails.
go_install_logged() {
  local gobin=$1 ldflags=$2 target=$3 binary=$4 rc
  set +e
  CGO_ENABLED=0 GOBIN="$gobin" nice -n 10 go install -trimpath -pgo=off -p "${BUILD_JOBS:-2}" -v -ldflags "$ldflags" \
    "$target" 2>&1 | tee "$LOG" |
    awk -v tag="$LOG_TAG" '/^go: downloading/ {d++; if (d % 50 == 0) {printf "[%s] %d modules downloaded\n", tag, d; fflush()}; next}
         {n++; if (n % 100 == 0) {printf "[%s] %d packages compiled (%s)\n", tag, n, $0; fflush()}}
         END {printf "[%s] %d modules downloaded, %d packages compiled\n", tag, d, n}' >&2
  rc=${PIPESTATUS[0]}
  set -e
  if [[ $rc -ne 0 || ! -x "$gobin/$binary" ]]; then
    log "go install failed (exit $rc); last lines of $LOG:"
    tail -n 20 "$LOG" >&2
    exit 1
  fi
}
