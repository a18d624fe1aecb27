{{/* Names, labels and derived settings shared by the templates. */}}

{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name: the release name when it already names the chart. */}}
{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
ferry.dev/cluster: {{ .Values.clusterName | quote }}
{{- end -}}

{{/* Selector of the ferry-vault + ferry-sidecar nodes. */}}
{{- define "ferry.nodeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{/* Selector of the bundled etcd members. */}}
{{- define "ferry.etcdSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: etcd
{{- end -}}

{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ferry.etcdImage" -}}
{{- printf "%s:%s" .Values.etcd.image.repository (default .Chart.AppVersion .Values.etcd.image.tag) -}}
{{- end -}}

{{/* Secret names: the existing Secret when one is named, else the one this chart keeps. */}}
{{- define "ferry.rootKeySecret" -}}
{{- default (printf "%s-root-key" (include "ferry.fullname" .)) .Values.rootKey.existingSecret -}}
{{- end -}}
{{- define "ferry.kekSecret" -}}
{{- default (printf "%s-key-encryption-key" (include "ferry.fullname" .)) .Values.keyEncryptionKey.existingSecret -}}
{{- end -}}
{{- define "ferry.rootTokenSecret" -}}
{{- default (printf "%s-root-token" (include "ferry.fullname" .)) .Values.rootToken.existingSecret -}}
{{- end -}}

{{- define "ferry.etcdName" -}}
{{- printf "%s-etcd" (include "ferry.fullname" .) -}}
{{- end -}}

{{/* The Secret with the bundled etcd's CA and certificates (etcd.tls). */}}
{{- define "ferry.etcdTlsSecret" -}}
{{- default (printf "%s-tls" (include "ferry.etcdName" .)) .Values.etcd.tls.secret -}}
{{- end -}}

{{/* "true" when the sidecar speaks TLS to etcd, bundled or external; else empty. */}}
{{- define "ferry.etcdTls" -}}
{{- if eq .Values.etcd.mode "bundled" -}}
{{- if .Values.etcd.tls.enabled }}true{{ end -}}
{{- else if .Values.etcd.external.tlsSecret -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when the sidecar presents a client certificate to etcd; else empty. */}}
{{- define "ferry.etcdClientCertificate" -}}
{{- if eq .Values.etcd.mode "bundled" -}}
{{- if .Values.etcd.tls.enabled }}true{{ end -}}
{{- else if and .Values.etcd.external.tlsSecret .Values.etcd.external.clientCertificate -}}
true
{{- end -}}
{{- end -}}

{{/* etcd's --max-txn-ops, as the bundled etcd runs or the external one says it runs. */}}
{{- define "ferry.etcdMaxTxnOps" -}}
{{- if eq .Values.etcd.mode "bundled" -}}
{{- .Values.etcd.maxTxnOps -}}
{{- else -}}
{{- .Values.etcd.external.maxTxnOps -}}
{{- end -}}
{{- end -}}

{{/* The etcd client URLs the sidecar connects to (comma-separated). */}}
{{- define "ferry.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "bundled" -}}
{{- $etcd := include "ferry.etcdName" . -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s.%s.svc:2379" $scheme $etcd $i $etcd $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Where other regions reach this cluster port. */}}
{{- define "ferry.clusterAddr" -}}
{{- default (printf "%s-cluster.%s.svc:%d" (include "ferry.fullname" .) .Release.Namespace (int .Values.clusterService.port)) .Values.clusterService.address -}}
{{- end -}}

{{/* What each node advertises as its own cluster address (clusterService.advertise): its pod
IP, or the Service address shared by every node. */}}
{{- define "ferry.nodeClusterAddr" -}}
{{- if eq .Values.clusterService.advertise "service" -}}
{{- include "ferry.clusterAddr" . -}}
{{- else -}}
{{- printf "$(POD_IP):8201" -}}
{{- end -}}
{{- end -}}

{{/* ferry-vault's API address inside the cluster (the operator's spec.cluster.address). */}}
{{- define "ferry.apiAddress" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.tls.enabled) (include "ferry.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}

{{/*
PodDisruptionBudget's API version: policy/v1 from Kubernetes 1.21, policy/v1beta1 before (1.20
serves only that one; 1.25 only policy/v1). Both the API list (`helm install` asks the cluster
what it serves) and the version (`helm template --kube-version`, whose API list is Helm's
built-in one with every group version) must agree on v1.
*/}}
{{- define "ferry.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/*
A generated secret value that survives upgrades: the live Secret's value when it exists
(`lookup` during helm install/upgrade), else a fresh one. Arguments: dict with ctx, name, key,
fresh (the new value, already a string).
*/}}
{{- define "ferry.keptValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- .fresh | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Restricted pod security for every container: nothing to escalate to, nothing to write. */}}
{{- define "ferry.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}
