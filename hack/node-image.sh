# Sourced by the hack/build-*-image.sh scripts: import an OCI archive into the local cluster's
# containerd unless the node already holds that manifest. The caller defines log, die,
# CONTAINERD_SOCK and DO_IMPORT (0 for --no-import).

# import_archive ARCHIVE NAME: ARCHIVE.digest holds the manifest digest; NAME is one of the
# references the archive carries, used to see what the node has.
import_archive() {
  [[ $DO_IMPORT -eq 1 ]] || return 0
  [[ -S "$CONTAINERD_SOCK" ]] || die "the cluster's containerd is not running ($CONTAINERD_SOCK); run hack/cluster.sh up or pass --no-import"
  local archive="$1" name="$2" want have t1=$SECONDS
  want="$(cat "$archive.digest")"
  have="$(ctr --address "$CONTAINERD_SOCK" --namespace k8s.io images ls "name==$name" 2>/dev/null |
    awk 'NR > 1 {print $3}')"
  if [[ "$have" == "$want" ]]; then
    log "$name ($want) already in the node"
    return 0
  fi
  ctr --address "$CONTAINERD_SOCK" --namespace k8s.io images import "$archive" >/dev/null
  log "imported $archive into the node in $((SECONDS - t1))s"
}
