# The parts the container tests share (sourced by tests/container/run and
# tests/container/flood from the repository's root): the image, a private network, TLS
# files and an admin token for the nodes and clients, pods started as the chart starts
# them, and waits on the cluster's status. Everything made here carries the label
# raftq-ct=$run_id and goes away on exit.
#
# Set before sourcing: test_name (for messages); optionally pod_args, more `docker run`
# arguments for every pod (a memory limit, settings).
pod_args=("${pod_args[@]+"${pod_args[@]}"}")
source scripts/setup

command -v docker >/dev/null && docker info >/dev/null 2>&1 || {
  echo "$test_name: no Docker engine here" >&2
  exit 1
}

image=raftq:ct
scripts/image "$image" >/dev/null
run_id=ct$$
net=raftq-$run_id
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
rm -f "$out/stop"
headless=raftq-headless
# Public gRPC port (clients) and internal one (Raft between the nodes), as in the chart.
port=7000
internal_port=7100
peers="1=raftq-0.$headless:$internal_port,2=raftq-1.$headless:$internal_port,3=raftq-2.$headless:$internal_port"
# The workload is a client: public ports.
all_addresses="raftq-0.$headless:$port,raftq-1.$headless:$port,raftq-2.$headless:$port,raftq-3.$headless:$port,raftq-4.$headless:$port"
# The TLS files (ca.pem, node.pem, node.key, client.pem, client.key) and the admin token
# (admin-token), mounted read-only at $tls_dir into the nodes and every client container.
certs=$(mktemp -d)
tls_dir=/etc/raftq-tls
ca_cert=$tls_dir/ca.pem
admin_token_file=$tls_dir/admin-token
# The bootstrap admin token (48 hex digits), and the workload principal's, made below.
admin_token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
chaos_token=

cleanup() {
  local status=$?
  if ((status != 0)); then
    for container in $(docker ps -aq --filter "label=raftq-ct=$run_id"); do
      echo "---- last log lines of $(docker inspect -f '{{.Name}}' "$container")" >&2
      docker logs --tail 15 "$container" 2>&1 | sed 's/^/    /' >&2 || true
    done
  fi
  docker ps -aq --filter "label=raftq-ct=$run_id" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker volume ls -q --filter "label=raftq-ct=$run_id" | xargs -r docker volume rm >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$certs"
  exit "$status"
}
trap cleanup EXIT
docker network create --label "raftq-ct=$run_id" "$net" >/dev/null

# The image runs as an unprivileged user (10001): it writes the files into the directory
# while that is open to it, so they are its own (node.key and admin-token mode 0600,
# readable by the nodes, which run as that user, and by root in the workload's
# container), then the directory is closed to writes again. The admin token goes in on
# standard input.
names=localhost,127.0.0.1
for n in 0 1 2 3 4; do names+=",raftq-$n.$headless"; done
chmod 0777 "$certs"
docker run --rm -i --label "raftq-ct=$run_id" --network none -v "$certs:/out" \
  --entrypoint /bin/sh "$image" -c \
  'raftq tls generate --out /out --name "$1" >/dev/null && umask 077 && cat >/out/admin-token' \
  sh "$names" <<<"$admin_token"
chmod 0755 "$certs"

say() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

# Whether container $1's log holds the text $2. (Not `docker logs | grep -q`: under
# pipefail, grep quitting at the first match fails the pipeline with SIGPIPE.)
log_has() {
  local log
  log=$(docker logs "$1" 2>&1)
  grep -qF "$2" <<<"$log"
}

# Starts pod N as the chart would: node id N+1, advertised as raftq-N.raftq-headless on
# the public and on the internal port; pod 0 forms the cluster, the others join through
# the internal ports of the initial pods (0, 1, 2) but their own.
start_pod() {
  local n=$1 i join=()
  local env=(-e "RAFTQ_NODE_ID=$((n + 1))" -e "RAFTQ_ADVERTISE=raftq-$n.$headless:$port"
    -e "RAFTQ_INTERNAL_ADVERTISE=raftq-$n.$headless:$internal_port" -e RAFTQ_LOG_FORMAT=text
    -e "RAFTQ_TLS__CERT=$tls_dir/node.pem" -e "RAFTQ_TLS__KEY=$tls_dir/node.key"
    -e "RAFTQ_TLS__CA=$ca_cert" -e "RAFTQ_AUTH__ADMIN_TOKEN_FILE=$admin_token_file")
  if ((n == 0)); then
    env+=(-e "RAFTQ_PEERS=$peers")
  else
    for i in 0 1 2; do
      ((i == n)) || join+=("raftq-$i.$headless:$internal_port")
    done
    env+=(-e "RAFTQ_JOIN=$(IFS=,; echo "${join[*]}")")
  fi
  docker run -d --name "$run_id-raftq-$n" --label "raftq-ct=$run_id" --network "$net" \
    --network-alias "raftq-$n.$headless" --stop-timeout 30 \
    --mount "type=volume,source=$run_id-data-$n,target=/var/lib/raftq,volume-label=raftq-ct=$run_id" \
    -v "$certs:$tls_dir:ro" "${env[@]}" "${pod_args[@]}" "$image" serve >/dev/null
}

# `raftq --addr` in pod $1's container, to its own public port, with the token $2 (none
# when empty). The token reaches the container through the docker client's environment
# (`-e RAFTQ_TOKEN` without a value), not on a command line.
node_raftq() {
  local n=$1 token=$2 env=()
  shift 2
  [[ -z $token ]] || env=(-e RAFTQ_TOKEN)
  RAFTQ_TOKEN=$token docker exec "${env[@]}" "$run_id-raftq-$n" \
    raftq --addr "127.0.0.1:$port" --ca-cert "$ca_cert" "$@"
}

# Runs a command, which must exit with status $1 (the CLI's: 9 UNAUTHENTICATED, 10
# PERMISSION_DENIED); $2 says what it is (the command itself may hold a token).
expect_exit() {
  local want=$1 what=$2 code=0
  shift 2
  "$@" >/dev/null 2>&1 || code=$?
  if ((code != want)); then
    echo "$test_name: $what exited with $code, not $want" >&2
    return 1
  fi
}

# Cluster status as JSON, asked (as the admin) of the lowest-numbered node that answers.
status_json() {
  local n
  for n in 0 1 2 3 4; do
    if node_raftq "$n" "$admin_token" --output json cluster status 2>/dev/null; then
      return 0
    fi
  done
  return 1
}

# True when the voters are exactly the ids given, a leader is known, and every voter
# answers with its applied index within 100 entries of the leader's commit index.
voters_caught_up() {
  local want=$1 json
  json=$(status_json) || return 1
  python3 - "$want" "$json" <<'PY'
import json, sys
want = set(int(i) for i in sys.argv[1].split(","))
status = json.loads(sys.argv[2])
nodes = status.get("nodes", [])
voters = {n["node_id"] for n in nodes if n.get("voter")}
leader = [n for n in nodes if n["node_id"] == status.get("leader_id")]
if voters != want or not leader:
    sys.exit(1)
committed = leader[0].get("committed_index", 0)
for n in nodes:
    if n["node_id"] in want and (n.get("role") in (None, "unknown") or n.get("applied_index", 0) + 100 < committed):
        sys.exit(1)
PY
}

# True when every data group runs on 3 of the nodes given, each node runs within one
# replica of even and leads within one group of even, and no replica is catching up.
replicas_spread() {
  local want=$1 groups=$2 json
  json=$(status_json) || return 1
  python3 - "$want" "$groups" "$json" <<'PY'
import json, sys
want = set(int(i) for i in sys.argv[1].split(","))
groups = int(sys.argv[2])
status = json.loads(sys.argv[3])
runs, leads, members = {n: 0 for n in want}, {n: 0 for n in want}, {}
for node in status.get("nodes", []):
    for replica in node.get("replicas", []):
        if node["node_id"] not in want or replica.get("rebuilding"):
            sys.exit(1)
        runs[node["node_id"]] += 1
        members.setdefault(replica["group_id"], set()).add(node["node_id"])
        if replica.get("role") == "leader":
            leads[node["node_id"]] += 1
        if replica.get("learners") or len(replica.get("voters", [])) != 3:
            sys.exit(1)
if len(members) != groups or any(len(m) != 3 for m in members.values()):
    sys.exit(1)
for counts in (runs, leads):
    if max(counts.values()) - min(counts.values()) > 1:
        sys.exit(1)
PY
}

# Waits, at most $3 seconds, until the $2 data groups are spread over the nodes $1.
wait_spread() {
  local want=$1 groups=$2 limit=$3 deadline=$((SECONDS + $3))
  until replicas_spread "$want" "$groups"; do
    if ((SECONDS >= deadline)); then
      echo "$test_name: the $groups data groups did not spread over {$want} within ${limit}s" >&2
      status_json >&2 || true
      return 1
    fi
    sleep 1
  done
  say "$groups data groups spread over {$want}, leaders too"
}

leader_id() {
  status_json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader_id", 0))'
}

# Waits, at most $2 seconds, until the voters are $1 and caught up.
wait_voters() {
  local want=$1 limit=$2 deadline=$((SECONDS + $2))
  until voters_caught_up "$want"; do
    if ((SECONDS >= deadline)); then
      echo "$test_name: voters did not become {$want} and catch up within ${limit}s" >&2
      status_json >&2 || true
      return 1
    fi
    sleep 1
  done
  say "voters {$want}, caught up"
}

