{{/* Names */}}
{{- define "zeptodb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zeptodb.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "zeptodb.headless" -}}
{{- printf "%s-headless" (include "zeptodb.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zeptodb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zeptodb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zeptodb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "zeptodb.labels" -}}
helm.sh/chart: {{ include "zeptodb.chart" . }}
{{ include "zeptodb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "zeptodb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zeptodb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "zeptodb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the cluster secret and the admin key. */}}
{{- define "zeptodb.secretName" -}}
{{- default (printf "%s-auth" (include "zeptodb.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* gRPC address of pod N through the headless Service. */}}
{{- define "zeptodb.podAddr" -}}
{{- $ctx := index . 0 }}{{- $ordinal := index . 1 }}
{{- printf "%s-%d.%s.%s.svc.%s:%d" (include "zeptodb.fullname" $ctx) (int $ordinal) (include "zeptodb.headless" $ctx) $ctx.Release.Namespace $ctx.Values.clusterDomain (int $ctx.Values.ports.grpc) }}
{{- end }}

{{/* --peers: the raft voters = the first cluster.voters pods (node id = ordinal + 1). */}}
{{- define "zeptodb.peers" -}}
{{- $voters := min (int .Values.cluster.voters) (int .Values.replicaCount) }}
{{- $out := list }}
{{- range $i := until (int $voters) }}
{{- $out = append $out (printf "%d=%s" (add1 $i) (include "zeptodb.podAddr" (list $ $i))) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/* Total shutdown budget inside the container after preStop. */}}
{{- define "zeptodb.shutdownBudget" -}}
{{- $b := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.shutdown.drainTimeoutSeconds) (int .Values.shutdown.drainDelaySeconds) (int .Values.shutdown.timeoutSeconds) }}
{{- if eq (include "zeptodb.scaleInHook" .) "true" }}
{{- $b = add $b (int .Values.lifecycle.scaleInTimeoutSeconds) }}
{{- end }}
{{- $b }}
{{- end }}

{{/*
"true" when the preStop hook is `zeptod prestop` (decommission on scale-down): cluster mode
with data nodes beyond the voters (cluster.learners), the only pods a scale-down removes.
*/}}
{{- define "zeptodb.scaleInHook" -}}
{{- and .Values.cluster.enabled .Values.cluster.learners .Values.lifecycle.decommissionOnScaleIn }}
{{- end }}
