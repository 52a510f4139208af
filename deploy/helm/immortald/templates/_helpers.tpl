{{/*
The labels of every object: the base's (name, component, part-of) and Helm's.
Called with (dict "ctx" $ "name" NAME "component" COMPONENT).
*/}}
{{- define "immortald.labels" -}}
app.kubernetes.io/name: {{ .name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: immortald
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
A pod template's labels: the base's, and the release. The selectors stay the
base's (app.kubernetes.io/name alone).
*/}}
{{- define "immortald.podLabels" -}}
app.kubernetes.io/name: {{ .name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end }}

{{- define "immortald.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "immortald.etcdImage" -}}
{{ .Values.etcd.image.repository }}:{{ .Values.etcd.image.tag }}
{{- end }}

{{/* http or https: the bundled etcd's scheme. */}}
{{- define "immortald.etcdScheme" -}}
{{ ternary "https" "http" .Values.etcd.tls.enabled }}
{{- end }}

{{/* The bundled etcd's member names: etcd-0 etcd-1 etcd-2. */}}
{{- define "immortald.etcdReplicas" -}}3{{- end }}

{{/*
IMMORTALD_ETCD_ENDPOINTS: every member of the bundled etcd, or
etcd.endpoints.
*/}}
{{- define "immortald.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $scheme := include "immortald.etcdScheme" . -}}
{{- $eps := list -}}
{{- range $i := until (int (include "immortald.etcdReplicas" .)) -}}
{{- $eps = append $eps (printf "%s://etcd-%d.etcd:2379" $scheme $i) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- join "," .Values.etcd.endpoints -}}
{{- end -}}
{{- end }}

{{/*
The member config file: config, with the kinds and, for a kind, a state-dir
on the emptyDir. Empty when there is nothing to write.
*/}}
{{- define "immortald.configFile" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- if .Values.kinds -}}
{{- $_ := set $cfg "kinds" .Values.kinds -}}
{{- if not (hasKey $cfg "state-dir") -}}
{{- $_ := set $cfg "state-dir" "/var/lib/immortald/state" -}}
{{- end -}}
{{- end -}}
{{- if $cfg -}}
{{ toYaml $cfg }}
{{- end -}}
{{- end }}

{{/*
Refuses values that cannot work, with a message that names the value.
*/}}
{{- define "immortald.validate" -}}
{{- if and (not .Values.etcd.enabled) (empty .Values.etcd.endpoints) -}}
{{- fail "etcd.enabled is false: set etcd.endpoints to your etcd's client URLs" -}}
{{- end -}}
{{- if and .Values.etcd.enabled .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints is only for an etcd of your own: set etcd.enabled=false, or leave etcd.endpoints empty for the bundled etcd" -}}
{{- end -}}
{{- if and .Values.etcd.enabled .Values.etcd.tls.enabled (not .Values.tls.enabled) -}}
{{- fail "etcd.tls.enabled requires client certificates: set tls.enabled (and tls.secretName) too" -}}
{{- end -}}
{{- if and .Values.etcd.enabled .Values.tls.enabled (not .Values.etcd.tls.enabled) -}}
{{- fail "tls.enabled with the bundled etcd needs etcd.tls.enabled too (the bundled etcd serves plain http otherwise)" -}}
{{- end -}}
{{- if and .Values.etcd.auth.enabled (not (and .Values.etcd.enabled .Values.etcd.tls.enabled)) -}}
{{- fail "etcd.auth.enabled is for the bundled etcd with etcd.tls.enabled (root acts by its certificate)" -}}
{{- end -}}
{{- if and (not .Values.etcd.enabled) .Values.tls.enabled -}}
{{- range .Values.etcd.endpoints -}}
{{- if not (hasPrefix "https://" .) -}}
{{- fail (printf "tls.enabled: etcd endpoint %q is not https://" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}
