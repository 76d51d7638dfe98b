{{- define "tooljet-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tooljet-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tooljet-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tooljet-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tooljet-operator
{{- end -}}

{{- define "tooljet-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tooljet-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tooljet-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tooljet-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The webhook configurations and policy are cluster-scoped: one name per release. */}}
{{- define "tooljet-operator.webhookName" -}}
{{- include "tooljet-operator.fullname" . -}}
{{- end -}}

{{- define "tooljet-operator.webhookService" -}}
{{- printf "%s-webhook" (include "tooljet-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tooljet-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "tooljet-operator.fullname" .) -}}
{{- end -}}

{{- define "tooljet-operator.webhookClientConfig" -}}
{{- if .Values.webhook.url -}}
url: {{ printf "%s%s" (trimSuffix "/" .Values.webhook.url) .path | quote }}
{{- else -}}
service:
  name: {{ include "tooljet-operator.webhookService" .root }}
  namespace: {{ .root.Release.Namespace }}
  path: {{ .path }}
  port: 443
{{- end -}}
{{- end -}}

{{/* The dashboard's pods: a name of their own, so no selector of the operator's matches them. */}}
{{- define "tooljet-operator.dashboardSelectorLabels" -}}
app.kubernetes.io/name: tooljet-dashboard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
