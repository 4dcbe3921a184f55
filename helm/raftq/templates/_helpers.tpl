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
The initial voters, "1=<pod 0>:PORT,2=<pod 1>:PORT,...": pod ordinal N is node id N+1.
*/}}
{{- define "raftq.initialPeers" -}}
{{- $fullname := include "raftq.fullname" . }}
{{- $headless := include "raftq.headlessName" . }}
{{- $domain := include "raftq.svcDomain" . }}
{{- $peers := list }}
{{- range $ordinal := until (int .Values.initialReplicas) }}
{{- $peers = append $peers (printf "%d=%s-%d.%s.%s:%d" (add1 $ordinal) $fullname $ordinal $headless $domain (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}

{{/*
Where pods beyond the initial ones join: the client Service, which routes only to ready
pods (members that know a leader); the raftq client follows the leader from there.
*/}}
{{- define "raftq.joinAddress" -}}
{{- printf "%s.%s:%d" (include "raftq.fullname" .) (include "raftq.svcDomain" .) (int .Values.ports.grpc) }}
{{- end }}

{{/*
Checks of values that the JSON schema cannot express.
*/}}
{{- define "raftq.validate" -}}
{{- if gt (int .Values.initialReplicas) (int .Values.replicas) }}
{{- fail (printf "initialReplicas (%d) must not exceed replicas (%d). At install, set both (e.g. --set replicas=1,initialReplicas=1). After install, initialReplicas stays as installed; to scale below it, remove the nodes with `raftq cluster remove-node` first and lower both (see the chart's README)." (int .Values.initialReplicas) (int .Values.replicas)) }}
{{- end }}
{{- if eq (int .Values.ports.grpc) (int .Values.ports.http) }}
{{- fail "ports.grpc and ports.http must differ" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "RAFTQ_NODE_ID" "RAFTQ_PEERS" "RAFTQ_JOIN" "RAFTQ_ADVERTISE" "RAFTQ_LISTEN" "RAFTQ_HTTP_LISTEN" "RAFTQ_DATA_DIR" "RAFTQ_LOG_FORMAT") }}
{{- fail (printf "extraEnv must not set %s: the chart sets it (from ports, listenHost, logFormat, or per pod)" .name) }}
{{- end }}
{{- end }}
{{- end }}
