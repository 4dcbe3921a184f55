{{/*
Chart name, cut to 43 characters (see fullname).
*/}}
{{- define "raftq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 43 | trimSuffix "-" }}
{{- end }}

{{/*
Full resource name. Cut to 43 characters, not the usual 63: the peer Service is
"<fullname>-headless" (a DNS label of at most 63) and the StatefulSet's pods carry a
controller-revision-hash label "<fullname>-<10 characters>" (a label value of at most 63).
*/}}
{{- define "raftq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 43 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 43 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 43 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "raftq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select this release's raftq pods. Never change them: a StatefulSet's
selector is immutable.
*/}}
{{- define "raftq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raftq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The server pods only: what the Services, the PDB, the network policy and the scheduling
rules select. The helper Deployments' pods (relay, mail bridge) carry the selector labels
too, with another component. (The StatefulSet's own selector stays the selector labels: it
cannot change on upgrade, and it takes no pods it does not own.)
*/}}
{{- define "raftq.serverSelectorLabels" -}}
{{ include "raftq.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "raftq.labels" -}}
helm.sh/chart: {{ include "raftq.chart" . }}
{{ include "raftq.selectorLabels" . }}
app.kubernetes.io/version: {{ include "raftq.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/part-of: raftq
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "raftq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "raftq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The headless Service that gives each pod its DNS name.
*/}}
{{- define "raftq.headlessName" -}}
{{- printf "%s-headless" (include "raftq.fullname" .) }}
{{- end }}

{{/*
"<namespace>.svc.<clusterDomain>", the suffix of in-cluster Service names.
*/}}
{{- define "raftq.svcDomain" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
The image tag: image.tag, or the chart's appVersion.
*/}}
{{- define "raftq.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is given, else repository:tag.
*/}}
{{- define "raftq.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "raftq.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
A socket address on listenHost: "host:port", with brackets for an IPv6 host.
Call with (list . PORT).
*/}}
{{- define "raftq.listenAddress" -}}
{{- $root := index . 0 }}
{{- $port := index . 1 }}
{{- if contains ":" $root.Values.listenHost }}
{{- printf "[%s]:%d" $root.Values.listenHost (int $port) }}
{{- else }}
{{- printf "%s:%d" $root.Values.listenHost (int $port) }}
{{- end }}
{{- end }}

{{/*
The internal address of the pod with ordinal N, "<fullname>-N.<headless>.<domain>:PORT"
(ports.internal). Call with (list . N).
*/}}
{{- define "raftq.internalAddress" -}}
{{- $root := index . 0 }}
{{- $ordinal := index . 1 }}
{{- printf "%s-%d.%s.%s:%d" (include "raftq.fullname" $root) (int $ordinal) (include "raftq.headlessName" $root) (include "raftq.svcDomain" $root) (int $root.Values.ports.internal) }}
{{- end }}

{{/*
The initial voters' internal addresses, "1=<pod 0>:PORT,2=<pod 1>:PORT,...": pod
ordinal N is node id N+1. Pod 0's RAFTQ_PEERS.
*/}}
{{- define "raftq.initialPeers" -}}
{{- $peers := list }}
{{- range $ordinal := until (int .Values.initialReplicas) }}
{{- $peers = append $peers (printf "%d=%s" (add1 $ordinal) (include "raftq.internalAddress" (list $ $ordinal))) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/*
Where the other pods join (RAFTQ_JOIN): the initial pods' internal addresses,
"<pod 0>:PORT,<pod 1>:PORT,..." (the container command drops the pod's own). Not the
client Service: it has only the public port. The node tries them in turn and follows
the leader from there.
*/}}
{{- define "raftq.joinAddresses" -}}
{{- $addresses := list }}
{{- range $ordinal := until (int .Values.initialReplicas) }}
{{- $addresses = append $addresses (include "raftq.internalAddress" (list $ $ordinal)) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/*
The client Service's public gRPC address, "<fullname>.<domain>:PORT": what clients, the
`raftq` CLI and the scale-down hook's Job connect to.
*/}}
{{- define "raftq.clientAddress" -}}
{{- printf "%s.%s:%d" (include "raftq.fullname" .) (include "raftq.svcDomain" .) (int .Values.ports.grpc) }}
{{- end }}

{{/*
Where the pods mount the TLS Secret (tls.crt, tls.key, ca.crt), and the CA of client
certificates (tls.clientCaSecret). Not under /etc/raftq: that is the ConfigMap's
read-only volume, and a mount point cannot be made inside it.
*/}}
{{- define "raftq.tlsDir" -}}
/etc/raftq-tls
{{- end }}
{{- define "raftq.clientCaDir" -}}
/etc/raftq-client-ca
{{- end }}

{{/*
The Secret holding the nodes' certificate: tls.existingSecret, or the one the
cert-manager Certificate writes (tls.certManager.secretName, default <fullname>-tls).
*/}}
{{- define "raftq.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- default (printf "%s-tls" (include "raftq.fullname" .)) .Values.tls.certManager.secretName }}
{{- end }}
{{- end }}

{{/*
The DNS names the nodes' certificate must be valid for, one per line: every pod's name
behind the headless Service (a wildcard; the other nodes dial it, and clients follow
leader hints to it), the client Service's names, and localhost (exec'd CLI calls).
*/}}
{{- define "raftq.tlsDnsNames" -}}
{{- $fullname := include "raftq.fullname" . -}}
*.{{ include "raftq.headlessName" . }}.{{ include "raftq.svcDomain" . }}
{{ $fullname }}
{{ $fullname }}.{{ .Release.Namespace }}
{{ $fullname }}.{{ .Release.Namespace }}.svc
{{ $fullname }}.{{ include "raftq.svcDomain" . }}
localhost
{{- end }}

{{/*
The IP addresses the nodes' certificate must be valid for, one per line: the loopback
addresses, for `raftq --addr 127.0.0.1:PORT` in a pod.
*/}}
{{- define "raftq.tlsIpAddresses" -}}
127.0.0.1
::1
{{- end }}

{{/*
The Secret holding the bootstrap admin token: auth.existingSecret, or the one the chart
creates (<fullname>-admin-token, templates/admin-token-secret.yaml). Only with TLS on:
without TLS, authentication is off.
*/}}
{{- define "raftq.adminTokenSecretName" -}}
{{- default (printf "%s-admin-token" (include "raftq.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/*
The key of the admin token in that Secret: auth.adminTokenKey in an existing Secret;
"admin-token" in the one the chart creates.
*/}}
{{- define "raftq.adminTokenKey" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.adminTokenKey }}
{{- else -}}
admin-token
{{- end }}
{{- end }}

{{/*
Where the pods (and the scale-down hook) mount the admin token Secret, and the token's
file there (RAFTQ_AUTH__ADMIN_TOKEN_FILE), whatever its key in the Secret.
*/}}
{{- define "raftq.authDir" -}}
/etc/raftq-auth
{{- end }}
{{- define "raftq.adminTokenFile" -}}
{{- printf "%s/admin-token" (include "raftq.authDir" .) }}
{{- end }}

{{/*
" --ca-cert <ca.crt in the pod>" with TLS on, else nothing: for `raftq` CLI calls in a
pod shown in NOTES.txt.
*/}}
{{- define "raftq.execCaFlag" -}}
{{- if .Values.tls.enabled }}
{{- printf " --ca-cert %s/ca.crt" (include "raftq.tlsDir" .) }}
{{- end }}
{{- end }}

{{/*
A `raftq` CLI call run in pod 0 (kubectl exec), for NOTES.txt: with TLS on, as the admin
(the token read from the mounted Secret into RAFTQ_TOKEN, through sh: the CLI takes the
token from --token or RAFTQ_TOKEN only). Call with (list . "ARGS"); ARGS must not hold
a single quote.
*/}}
{{- define "raftq.execRaftq" -}}
{{- $root := index . 0 }}
{{- $args := index . 1 }}
{{- $call := printf "raftq --addr 127.0.0.1:%d%s %s" (int $root.Values.ports.grpc) (include "raftq.execCaFlag" $root) $args }}
{{- if $root.Values.tls.enabled }}
{{- printf "kubectl --namespace %s exec %s-0 -- sh -c 'RAFTQ_TOKEN=$(cat %s) %s'" $root.Release.Namespace (include "raftq.fullname" $root) (include "raftq.adminTokenFile" $root) $call }}
{{- else }}
{{- printf "kubectl --namespace %s exec %s-0 -- %s" $root.Release.Namespace (include "raftq.fullname" $root) $call }}
{{- end }}
{{- end }}

{{/*
Checks of values that the JSON schema cannot express.
*/}}
{{- define "raftq.validate" -}}
{{- if gt (int .Values.initialReplicas) (int .Values.replicas) }}
{{- fail (printf "initialReplicas (%d) must not exceed replicas (%d). At install, set both (e.g. --set replicas=1,initialReplicas=1). After install, initialReplicas stays as installed; to scale below it, remove the nodes with `raftq cluster remove-node` first and lower both (see the chart's README)." (int .Values.initialReplicas) (int .Values.replicas)) }}
{{- end }}
{{- $ports := list (int .Values.ports.grpc) (int .Values.ports.internal) (int .Values.ports.http) }}
{{- if ne (len (uniq $ports)) (len $ports) }}
{{- fail (printf "ports.grpc (%d), ports.internal (%d) and ports.http (%d) must all differ" (int .Values.ports.grpc) (int .Values.ports.internal) (int .Values.ports.http)) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "RAFTQ_NODE_ID" "RAFTQ_PEERS" "RAFTQ_JOIN" "RAFTQ_ADVERTISE" "RAFTQ_LISTEN" "RAFTQ_INTERNAL_ADVERTISE" "RAFTQ_INTERNAL_LISTEN" "RAFTQ_HTTP_LISTEN" "RAFTQ_DATA_DIR" "RAFTQ_LOG_FORMAT") }}
{{- fail (printf "extraEnv must not set %s: the chart sets it (from ports, listenHost, logFormat, or per pod)" .name) }}
{{- end }}
{{- if or (has (upper .name) (list "RAFTQ_INSECURE" "RAFTQ_CA_CERT")) (hasPrefix "RAFTQ_TLS__" (upper .name)) }}
{{- fail (printf "extraEnv must not set %s: the chart sets TLS from the tls values (tls.enabled, tls.existingSecret, tls.certManager, tls.clientCaSecret)" .name) }}
{{- end }}
{{- if or (eq (upper .name) "RAFTQ_TOKEN") (hasPrefix "RAFTQ_AUTH__" (upper .name)) }}
{{- fail (printf "extraEnv must not set %s: the chart sets authentication from the auth values (auth.existingSecret, auth.adminTokenKey; on with tls.enabled), and a token in the environment is easy to read" .name) }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled }}
{{- fail (printf "tls.existingSecret (%s) and tls.certManager.enabled are both set: give the nodes' certificate one way only" .Values.tls.existingSecret) }}
{{- end }}
{{- if not (or .Values.tls.existingSecret .Values.tls.certManager.enabled) }}
{{- fail "tls.enabled is true (the default) but no certificate is given: set tls.existingSecret to a Secret with tls.crt, tls.key and ca.crt, or tls.certManager.enabled=true with tls.certManager.issuerRef.name to have cert-manager issue one (see the TLS section of the chart's README). Only for a trial on a trusted network: tls.enabled=false serves plaintext." }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled is true but tls.certManager.issuerRef.name is empty: name the cert-manager Issuer (or ClusterIssuer, with tls.certManager.issuerRef.kind) that issues the nodes' certificate" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The metadata annotations (at the indentation of `annotations:`) that skip findings of the
checkov scanner (scripts/chart-check) which these values make deliberate; each goes away
with the value that enforces it. Nothing when there is none.
*/}}
{{- define "raftq.checkovSkips" -}}
{{- if or (not .Values.networkPolicy.enabled) (not .Values.image.digest) }}
annotations:
  {{- $skip := 0 }}
  {{- if not .Values.networkPolicy.enabled }}
  {{- $skip = add1 $skip }}
  checkov.io/skip{{ $skip }}: CKV2_K8S_6=networkPolicy.enabled is false, the default, as not every cluster enforces NetworkPolicy; enable it to restrict ingress
  {{- end }}
  {{- if not .Values.image.digest }}
  {{- $skip = add1 $skip }}
  checkov.io/skip{{ $skip }}: CKV_K8S_43=image.digest is empty and the image is pinned by its release tag (the chart's appVersion); set image.digest to pin by digest
  {{- end }}
{{- end }}
{{- end }}
