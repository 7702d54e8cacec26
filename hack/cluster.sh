#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, with fake GPUs.
#
#   hack/cluster.sh up       build what is missing, start everything, wait until usable
#   hack/cluster.sh down     stop every process this script started, unmount, remove netns
#   hack/cluster.sh status   show the processes and the node
#   hack/cluster.sh env      print `export KUBECONFIG=... PATH=...` (eval "$(hack/cluster.sh env)")
#   hack/cluster.sh reset    down, then delete all cluster state (PKI, etcd, images)
#   hack/cluster.sh kubectl ARGS...   kubectl against the cluster
#   hack/cluster.sh kwok N   add N simulated nodes (kwok; tainted, label type=kwok); 0 removes them
#
# Components: etcd (loopback), kube-apiserver (TLS, Node+RBAC authorization, ServiceAccount
# tokens, default admission plugins + NodeRestriction), kube-controller-manager,
# kube-scheduler, kube-proxy (iptables), CoreDNS (cluster DNS on the pod bridge), and one
# real node: kubelet + containerd + runc with a CNI bridge. Binaries come from
# hack/build-k8s.sh, containerd/runc/CNI plugins from Debian packages. The node advertises
# NVIDIA_GPU_COUNT `nvidia.com/gpu` as an extended resource so the real scheduler does GPU
# accounting; no GPU is attached.
#
# All state lives under $CAIRN_CLUSTER_DIR (default ~/.cache/cairn/cluster). Needs root.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HERE/lib.sh"
STATE="${CAIRN_CLUSTER_DIR:-$HOME/.cache/cairn/cluster}"
BIN_DIR="$("$HERE/build-k8s.sh" --print-bin-dir)"

NODE_NAME="${CAIRN_NODE_NAME:-cairn-node}"
BRIDGE=cairn0
# Private ranges reserved for this cluster: pods on a bridge owned by it, services virtual.
NODE_IP=10.213.0.1
POD_CIDR=10.213.0.0/24
SERVICE_CIDR=10.214.0.0/24
KUBERNETES_SVC_IP=10.214.0.1
API_PORT=16443
ETCD_CLIENT_URL=http://127.0.0.1:23790
ETCD_PEER_URL=http://127.0.0.1:23800
# Cluster DNS (CoreDNS) answers on the bridge address; the kubelet hands it to pods.
CLUSTER_DNS_IP=$NODE_IP
COREDNS_READY_URL=http://127.0.0.1:18181/ready
NVIDIA_GPU_COUNT="${CAIRN_GPU_COUNT:-4}"
NVIDIA_GPU_PRODUCT="${CAIRN_GPU_PRODUCT:-NVIDIA-H100-80GB-HBM3}"
PAUSE_IMAGE=localhost/cairn/pause:3.10
# Simulated nodes: never run containers; their pods get fake IPs from a range nothing routes.
KWOK_POD_CIDR=10.215.0.0/16
KWOK_NODE_GPUS="${CAIRN_KWOK_NODE_GPUS:-8}"

PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
KUBECONFIG_ADMIN="$STATE/admin.kubeconfig"
CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler coredns containerd kube-proxy kubelet)

kubectl_admin() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# wait_for DESCRIPTION TIMEOUT_SECONDS COMMAND... : poll until COMMAND succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- processes

pid_of() {
  local f="$RUN/$1.pid"
  [[ -f "$f" ]] || return 1
  local pid; pid="$(<"$f")"
  # The PID must still be the binary we started (guards against PID reuse after a reboot).
  local cmdline
  cmdline="$( { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$(<"$RUN/$1.cmd")"* ]] || return 1
  echo "$pid"
}

is_running() { pid_of "$1" >/dev/null; }

# A fingerprint of a command line and of the files it names (configs, certificates), so that
# `up` restarts a component whose configuration changed.
fingerprint() {
  local a
  for a in "$@"; do
    printf '%s\n' "$a"
    if [[ -f "$a" ]]; then sha256sum <"$a"; fi
  done | sha256sum | cut -c1-32
}

# start NAME BINARY ARGS... : run detached in its own session, log to $LOGS/NAME.log.
start() {
  local name=$1; shift
  local fp; fp="$(fingerprint "$@")"
  if is_running "$name"; then
    if [[ "$(cat "$RUN/$name.fingerprint" 2>/dev/null)" == "$fp" ]]; then
      log "$name already running (pid $(pid_of "$name"))"
      return
    fi
    log "$name configuration changed; restarting it"
    stop "$name"
  fi
  mkdir -p "$LOGS" "$RUN"
  printf '\n==== %s start: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOGS/$name.log"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "$1" >"$RUN/$name.cmd"
  echo "$fp" >"$RUN/$name.fingerprint"
  date +%s >"$RUN/$name.started"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

# alive PID : the process exists and is not a zombie waiting for its parent to reap it.
alive() {
  local stat
  stat="$( { cat "/proc/$1/stat"; } 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

stop() {
  local name=$1 pid
  pid="$(pid_of "$name")" || { rm -f "$RUN/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if alive "$pid"; then
    log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  fi
  rm -f "$RUN/$name.pid"
  log "stopped $name (pid $pid)"
}

# ---------------------------------------------------------------- PKI and kubeconfigs

# cert NAME CN ORG EXT_KEY_USAGE [SUBJECT_ALT_NAMES]
cert() {
  local name=$1 cn=$2 org=$3 eku=$4 sans=${5:-}
  [[ -f "$PKI/$name.crt" ]] && return
  local subj="/CN=$cn"; [[ -n "$org" ]] && subj="/O=$org/CN=$cn"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

gen_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  if [[ ! -f "$PKI/ca.crt" ]]; then
    log "generating PKI in $PKI"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=cairn-local-cluster-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  cert kube-apiserver kube-apiserver "" serverAuth \
    "IP:$NODE_IP,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
  cert admin cairn-admin system:masters clientAuth
  cert kube-controller-manager system:kube-controller-manager "" clientAuth
  cert kube-scheduler system:kube-scheduler "" clientAuth
  cert kube-proxy system:kube-proxy "" clientAuth
  cert coredns system:coredns "" clientAuth
  cert kubelet-client "system:node:$NODE_NAME" system:nodes clientAuth
  cert kubelet-serving "$NODE_NAME" "" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  if [[ ! -f "$PKI/sa.key" ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
}

# write_file PATH < CONTENT : replace PATH only when the content differs. Components watch their
# files (kube-proxy exits when its config is rewritten), so an unchanged file stays untouched.
write_file() {
  local path=$1 tmp
  tmp="$(mktemp "$path.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$path"; then rm -f "$tmp"; else mv -f "$tmp" "$path"; fi
}

# kubeconfig FILE CERT_NAME : credentials embedded so the file can be copied anywhere.
kubeconfig() {
  local file=$1 name=$2
  write_file "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cairn
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: cairn
  context: {cluster: cairn, user: $name}
current-context: cairn
EOF
  chmod 600 "$file"
}

# ---------------------------------------------------------------- configuration files

write_configs() {
  mkdir -p "$STATE/kubelet" "$STATE/cni/net.d" "$STATE/containerd" "$STATE/kube-proxy" "$STATE/coredns"
  kubeconfig "$KUBECONFIG_ADMIN" admin
  kubeconfig "$STATE/kube-controller-manager.kubeconfig" kube-controller-manager
  kubeconfig "$STATE/kube-scheduler.kubeconfig" kube-scheduler
  kubeconfig "$STATE/kube-proxy/kubeconfig" kube-proxy
  kubeconfig "$STATE/kubelet/kubeconfig" kubelet-client
  kubeconfig "$STATE/coredns/kubeconfig" coredns

  write_file "$STATE/coredns/Corefile" <<EOF
.:53 {
    bind $CLUSTER_DNS_IP
    ready 127.0.0.1:18181
    health 127.0.0.1:18080
    errors
    cache 30
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns/kubeconfig cairn
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    loop
    forward . /etc/resolv.conf
}
EOF

  write_file "$STATE/coredns/rbac.yaml" <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:coredns
EOF

  write_file "$STATE/cni/net.d/10-cairn.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cairn",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "${POD_CIDR%.*}.10", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF

  write_file "$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE, so scores below containerd's own (the sandbox's
  # -998, Guaranteed pods' -997) would make runc fail; clamp them instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "${CAIRN_RUNC:-$(command -v runc)}"
        Root = "$STATE/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF

  write_file "$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine runs cgroup v1, which kubelet 1.35+ refuses unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: /etc/resolv.conf
serializeImagePulls: false
nodeStatusUpdateFrequency: 10s
# Locally built images cannot be pulled again: never garbage-collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
maxPods: 110
shutdownGracePeriod: 0s
EOF

  write_file "$STATE/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy/kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
nodePortAddresses: [primary]
# Leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# ---------------------------------------------------------------- pieces of `up`

check_host() {
  [[ $EUID -eq 0 ]] || die "must run as root (containers, mounts, network namespaces)"
  local missing=()
  for t in containerd containerd-shim-runc-v2 runc ctr openssl iptables conntrack ip curl go python3; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  for p in bridge host-local loopback; do [[ -x /usr/lib/cni/$p ]] || missing+=("cni:$p"); done
  if ((${#missing[@]})); then
    die "missing host tools: ${missing[*]} (apt-get install containerd runc containernetworking-plugins iptables conntrack iproute2 curl)"
  fi
}

prepare_network() {
  sysctl -qw net.ipv4.ip_forward=1
  if [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  # The API server and kubelet listen on the bridge address, which pods reach directly.
  # (no `| grep -q` here or below: with pipefail, grep's early exit can fail the pipeline)
  [[ "$(ip -4 addr show dev "$BRIDGE")" == *" $NODE_IP/"* ]] || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

api_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$API_PORT/readyz" >/dev/null
}

start_control_plane() {
  start etcd "$BIN_DIR/etcd" --name cairn --data-dir "$STATE/etcd" \
    --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
    --listen-peer-urls "$ETCD_PEER_URL" --initial-advertise-peer-urls "$ETCD_PEER_URL" \
    --initial-cluster "cairn=$ETCD_PEER_URL" --unsafe-no-fsync --log-level warn
  wait_for etcd 60 curl -fsS --max-time 2 "$ETCD_CLIENT_URL/health"

  start kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers "$ETCD_CLIENT_URL" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/kube-apiserver.crt" --tls-private-key-file "$PKI/kube-apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver 120 api_ready

  start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false --profiling=false

  start kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false

  kubectl_admin apply -f "$STATE/coredns/rbac.yaml" >/dev/null
  start coredns "$BIN_DIR/coredns" -conf "$STATE/coredns/Corefile"
}

# The sandbox ("pause") image, built from hack/pause and imported into the node's containerd.
ensure_pause_image() {
  if [[ -n "$(ctr_k8s images ls -q "name==$PAUSE_IMAGE" 2>/dev/null)" ]]; then return; fi
  local dir="$CACHE_ROOT/pause"
  mkdir -p "$dir/rootfs"
  if [[ ! -f "$dir/pause.oci.tar" ]]; then
    log "building the pause image"
    (cd "$HERE/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/rootfs/pause" main.go)
    tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$dir/rootfs" -cf "$dir/layer.tar" pause
    python3 "$HERE/oci_image.py" pack --out "$dir/pause.oci.tar" --name "$PAUSE_IMAGE" \
      --layer "$dir/layer.tar" --entrypoint '["/pause"]' >/dev/null
  fi
  ctr_k8s images import "$dir/pause.oci.tar" >/dev/null
  [[ -n "$(ctr_k8s images ls -q "name==$PAUSE_IMAGE")" ]] || die "pause image import failed"
  log "imported $PAUSE_IMAGE"
}

start_node() {
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for containerd 60 ctr --address "$CONTAINERD_SOCK" version
  ensure_pause_image

  start kube-proxy "$BIN_DIR/kube-proxy" --config "$STATE/kube-proxy/config.yaml"

  start kubelet "$BIN_DIR/kubelet" \
    --config "$STATE/kubelet/config.yaml" \
    --kubeconfig "$STATE/kubelet/kubeconfig" \
    --root-dir "$STATE/kubelet/root" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "nvidia.com/gpu.present=true,nvidia.com/gpu.product=$NVIDIA_GPU_PRODUCT,nvidia.com/gpu.count=$NVIDIA_GPU_COUNT"
}

# Ready, as reported by the kubelet running now: after a restart the stored condition is stale
# until the new kubelet's first heartbeat (which follows its registration).
node_ready() {
  local out status beat
  out="$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null)" || return 1
  read -r status beat <<<"$out"
  [[ "$status" == True && -n "$beat" ]] || return 1
  (( $(date -d "$beat" +%s) >= $(cat "$RUN/kubelet.started" 2>/dev/null || echo 0) ))
}

gpus_allocatable() {
  [[ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}' 2>/dev/null)" == "$NVIDIA_GPU_COUNT" ]]
}

default_sa_exists() { kubectl_admin -n default get serviceaccount default; }

advertise_gpus() {
  # Extended resources are advertised by patching node status; the kubelet then reports them
  # as allocatable. A restarted kubelet may zero them, so this runs on every `up`.
  kubectl_admin label node "$NODE_NAME" --overwrite \
    "nvidia.com/gpu.present=true" "nvidia.com/gpu.product=$NVIDIA_GPU_PRODUCT" \
    "nvidia.com/gpu.count=$NVIDIA_GPU_COUNT" >/dev/null
  kubectl_admin patch node "$NODE_NAME" --subresource=status --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$NVIDIA_GPU_COUNT\"}]" >/dev/null
  wait_for "nvidia.com/gpu allocatable" 60 gpus_allocatable
}

# ---------------------------------------------------------------- simulated nodes (kwok)

kwok_wanted() { cat "$STATE/kwok/nodes" 2>/dev/null || echo 0; }

start_kwok() {
  "$HERE/build-k8s.sh" --kwok >/dev/null
  mkdir -p "$STATE/kwok"
  cert kwok kwok system:masters clientAuth
  kubeconfig "$STATE/kwok/kubeconfig" kwok
  # kwok alone has no default stages (kwokctl adds them); use upstream's "fast" ones from the
  # same module version.
  local src
  src="$(cd "$HERE/kwok" && go mod download -json sigs.k8s.io/kwok | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  local f
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$src/kustomize/stage/$f"
  done | write_file "$STATE/kwok/stages.yaml"
  start kwok "$BIN_DIR/kwok" --kubeconfig "$STATE/kwok/kubeconfig" --config "$STATE/kwok/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr "$KWOK_POD_CIDR" --node-lease-duration-seconds 40
}

kwok_node() { # kwok_node NAME : a simulated GPU node as JSON
  cat <<EOF
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "$1",
   "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
   "labels": {"type": "kwok", "kubernetes.io/hostname": "$1", "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true",
              "nvidia.com/gpu.product": "$NVIDIA_GPU_PRODUCT", "nvidia.com/gpu.count": "$KWOK_NODE_GPUS"}},
 "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
 "status": {
   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "$KWOK_NODE_GPUS"},
   "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "$KWOK_NODE_GPUS"}}}
EOF
}

kwok_nodes_ready() {
  local want=$1 ready
  ready="$(kubectl_admin get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)"
  [[ "$ready" -ge "$want" ]]
}

cmd_kwok() {
  local n=${1:-}
  [[ "$n" =~ ^[0-9]+$ ]] || die "usage: $0 kwok N (number of simulated nodes; 0 removes them)"
  api_ready 2>/dev/null || die "the cluster is not up (hack/cluster.sh up)"
  local name existing
  existing="$(kubectl_admin get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')"
  for name in $existing; do
    if ! [[ "$name" =~ ^kwok-node-([0-9]+)$ ]] || (( BASH_REMATCH[1] >= n )); then
      kubectl_admin delete node "$name" >/dev/null
    fi
  done
  if ((n == 0)); then
    stop kwok
    rm -f "$STATE/kwok/nodes"
    log "removed the simulated nodes"
    return
  fi
  start_kwok
  echo "$n" >"$STATE/kwok/nodes"
  local i items=()
  for ((i = 0; i < n; i++)); do items+=("$(kwok_node "kwok-node-$i")"); done
  local IFS=,
  echo "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [${items[*]}]}" |
    kubectl_admin apply -f - >/dev/null
  unset IFS
  wait_for "$n simulated nodes Ready" 120 kwok_nodes_ready "$n"
  log "$n simulated nodes Ready (label type=kwok, taint kwok.x-k8s.io/node=fake:NoSchedule, $KWOK_NODE_GPUS nvidia.com/gpu each)"
}

# ---------------------------------------------------------------- commands

# After a crash or a reboot (processes gone without `down`), pod mounts, shims and the
# containerd runtime state are left behind; clear them before starting afresh.
cleanup_stale() {
  local c
  for c in "${COMPONENTS[@]}"; do is_running "$c" && return 0; done
  [[ -d "$STATE/containerd/state" || -d "$STATE/cni/ipam" ]] || return 0
  log "no component running; clearing what a previous run left behind"
  stop_shims
  cleanup_mounts
  rm -rf "$STATE/containerd/state" "$STATE/cni/ipam"
}

cmd_up() {
  check_host
  local t0=$SECONDS
  "$HERE/build-k8s.sh" >/dev/null
  mkdir -p "$STATE" "$LOGS" "$RUN"
  cleanup_stale
  gen_pki
  write_configs
  prepare_network
  start_control_plane
  start_node
  wait_for "node $NODE_NAME to register" 120 kubectl_admin get node "$NODE_NAME" ||
    { tail -n 30 "$LOGS/kubelet.log" >&2; exit 1; }
  wait_for "node $NODE_NAME Ready" 180 node_ready || { tail -n 30 "$LOGS/kubelet.log" >&2; exit 1; }
  advertise_gpus
  wait_for "default ServiceAccount" 60 default_sa_exists
  wait_for "cluster DNS" 60 curl -fsS --max-time 2 "$COREDNS_READY_URL"
  if (( $(kwok_wanted) > 0 )); then start_kwok; fi
  log "cluster up in $((SECONDS - t0))s; node $NODE_NAME Ready with $NVIDIA_GPU_COUNT nvidia.com/gpu"
  log "use it: eval \"\$($0 env)\""
}

# Network namespaces and mounts under the state dir belong to this cluster's pods.
cleanup_mounts() {
  local m
  # Deepest first; lazy so a busy mount cannot stop the teardown.
  awk -v root="$STATE/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

stop_pods() {
  # Kill the containers containerd runs for this cluster, then their shims.
  if is_running containerd; then
    local t
    for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
      ctr_k8s tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
      ctr_k8s tasks delete -f "$t" >/dev/null 2>&1 || true
    done
  fi
}

stop_shims() {
  # Shims outlive containerd; ours are the ones started with our socket address.
  local p cmdline
  for p in /proc/[0-9]*; do
    [[ -r "$p/cmdline" ]] || continue
    cmdline="$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)" || continue
    if [[ "$cmdline" == *containerd-shim*" -address $CONTAINERD_SOCK "* ]]; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

# The kubelet adds a few chains of its own; kube-proxy --cleanup removes only kube-proxy's.
cleanup_kubelet_iptables() {
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for chain in INPUT OUTPUT; do
      while "$ipt" -t filter -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null && "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

cmd_down() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  [[ -d "$STATE" ]] || { log "no cluster state at $STATE"; return 0; }
  stop kwok
  stop kubelet
  stop_pods
  stop kube-proxy
  stop containerd
  stop_shims
  local c
  for c in coredns kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done
  if [[ -x "$BIN_DIR/kube-proxy" ]]; then
    "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  cleanup_kubelet_iptables
  # Empty pod cgroups the kubelet created (cgroupfs driver, one tree per v1 hierarchy).
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  cleanup_mounts
  rm -rf "$STATE/containerd/state" "$STATE/cni/ipam"
  ip link del "$BRIDGE" 2>/dev/null || true
  log "cluster down (state kept in $STATE; 'reset' deletes it)"
}

cmd_reset() {
  cmd_down
  cleanup_mounts
  rm -rf "$STATE"
  log "removed $STATE"
}

cmd_status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "$c")"; then printf '%-24s running  pid %s\n' "$c" "$pid"
    else printf '%-24s stopped\n' "$c"; rc=1; fi
  done
  if (( $(kwok_wanted) > 0 )); then
    if pid="$(pid_of kwok)"; then printf '%-24s running  pid %s (%s simulated nodes)\n' kwok "$pid" "$(kwok_wanted)"
    else printf '%-24s stopped\n' kwok; rc=1; fi
  fi
  if [[ $rc -eq 0 ]]; then
    kubectl_admin get nodes -o wide
    kubectl_admin get node "$NODE_NAME" -o jsonpath='{"allocatable nvidia.com/gpu: "}{.status.allocatable.nvidia\.com/gpu}{"\n"}'
  fi
  return $rc
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export PATH=$BIN_DIR:\$PATH"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  reset) cmd_reset ;;
  status) cmd_status ;;
  env) cmd_env ;;
  kubectl) shift; kubectl_admin "$@" ;;
  kwok) shift; cmd_kwok "$@" ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
