{{/* The chart's name (app.kubernetes.io/name). */}}
{{- define "contrastive.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' base name: the release's name when it contains the chart's (so
`helm install contrastive ...` names them as the Kustomize overlays do), else
RELEASE-contrastive. Room is left for the longest suffix, -qdrant-api-key. */}}
{{- define "contrastive.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "contrastive.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; (dict "root" $ "component" "api"), component optional. */}}
{{- define "contrastive.labels" -}}
helm.sh/chart: {{ include "contrastive.chart" .root }}
{{ include "contrastive.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "contrastive.selectorLabels" -}}
app.kubernetes.io/name: {{ include "contrastive.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "contrastive.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "contrastive.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "contrastive.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "contrastive.qdrantKeySecret" -}}
{{- default (printf "%s-qdrant-api-key" (include "contrastive.fullname" .)) .Values.qdrant.apiKey.existingSecret }}
{{- end }}

{{- define "contrastive.qdrantUrl" -}}
{{- if .Values.qdrant.deploy }}
{{- printf "http://%s-qdrant:6333" (include "contrastive.fullname" .) }}
{{- else }}
{{- .Values.qdrant.url }}
{{- end }}
{{- end }}

{{/* The fewest pods of <fullname>: the autoscaler's minimum, or api.replicas. */}}
{{- define "contrastive.minReplicas" -}}
{{- if eq .Values.autoscaling.mode "off" }}
{{- .Values.api.replicas | int }}
{{- else }}
{{- .Values.autoscaling.minReplicas | int }}
{{- end }}
{{- end }}

{{/* An env value as the service parses it: a string, and a whole number without the
exponent that Go prints for large floats (values files give numbers as floats). */}}
{{- define "contrastive.envString" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* The settings that the chart sets itself and `settings` may not. */}}
{{- define "contrastive.reservedSettings" -}}
{{- list "host" "port" "api_keys" "collections" "collections_dir" "collections_backend" "qdrant_url" "qdrant_api_key" "qdrant_timeout" | toJson }}
{{- end }}

{{/* Refuses values that would deploy something broken, with what to set instead. */}}
{{- define "contrastive.validate" -}}
{{- if not (has .Values.mode (list "faiss" "qdrant")) }}
{{- fail (printf "mode must be faiss or qdrant, not %q" .Values.mode) }}
{{- end }}
{{- if not (has .Values.autoscaling.mode (list "keda" "hpa-queue-depth" "cpu" "off")) }}
{{- fail (printf "autoscaling.mode must be keda, hpa-queue-depth, cpu or off, not %q" .Values.autoscaling.mode) }}
{{- end }}
{{- if and (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.keys) }}
{{- fail "set apiKeys.existingSecret (a Secret with the key api-keys) or apiKeys.keys: the service is not deployed without API keys" }}
{{- end }}
{{- range $name, $_ := .Values.settings }}
{{- if has $name (include "contrastive.reservedSettings" $ | fromJsonArray) }}
{{- fail (printf "settings.%s is set by the chart (see values.yaml: mode, qdrant, apiKeys)" $name) }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "qdrant" }}
{{- if and (not .Values.qdrant.deploy) (not .Values.qdrant.url) }}
{{- fail "qdrant.deploy is false: set qdrant.url to your Qdrant" }}
{{- end }}
{{- if and (not .Values.qdrant.apiKey.existingSecret) (not .Values.qdrant.apiKey.value) }}
{{- fail "set qdrant.apiKey.existingSecret (a Secret with the key api-key) or qdrant.apiKey.value: Qdrant would be open without one" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The service container's env: (dict "root" $ "collections" LIST), where LIST is the
env entries of the mode (CONTRASTIVE_COLLECTIONS...) that go after host and port. */}}
{{- define "contrastive.env" -}}
- name: CONTRASTIVE_HOST
  value: "0.0.0.0"
- name: CONTRASTIVE_PORT
  value: "8000"
{{- with .collections }}
{{ toYaml . }}
{{- end }}
{{- range $name, $value := .root.Values.settings }}
- name: CONTRASTIVE_{{ upper $name }}
  value: {{ include "contrastive.envString" $value | quote }}
{{- end }}
- name: CONTRASTIVE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "contrastive.apiKeysSecret" .root }}
      key: api-keys
- name: OMP_NUM_THREADS
  value: {{ include "contrastive.envString" .root.Values.ompNumThreads | quote }}
# the root filesystem is read-only: caches (torch, Hugging Face) go to /tmp
- name: HOME
  value: /tmp
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Probes on the service's routes (none needs a key): (dict "probes" VALUES). */}}
{{- define "contrastive.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml .probes.readiness | nindent 2 }}
{{- end }}

{{/* The pod's scheduling fields. */}}
{{- define "contrastive.scheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Restarts the pods when the chart's own Secrets change (keys are read at start). */}}
{{- define "contrastive.secretChecksums" -}}
{{- if not .Values.apiKeys.existingSecret }}
checksum/api-keys: {{ .Values.apiKeys.keys | toJson | sha256sum }}
{{- end }}
{{- if and (eq .Values.mode "qdrant") (not .Values.qdrant.apiKey.existingSecret) }}
checksum/qdrant-api-key: {{ .Values.qdrant.apiKey.value | sha256sum }}
{{- end }}
{{- end }}

{{/* The default KEDA query: items queued in this release's <fullname> pods
(<fullname>-<hash>-<id>: not <fullname>-index-..., the single writer), summed over the
pods and modalities, each averaged over a minute. */}}
{{- define "contrastive.kedaQuery" -}}
{{- if .Values.autoscaling.keda.query }}
{{- .Values.autoscaling.keda.query }}
{{- else }}
{{- printf "sum(avg_over_time(contrastive_queue_depth{namespace=%q,pod=~\"%s-[a-z0-9]+-[a-z0-9]+\"}[1m]))" .Release.Namespace (include "contrastive.fullname" .) }}
{{- end }}
{{- end }}
