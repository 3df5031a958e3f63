{{/*
Expand the name of the chart.
*/}}
{{- define "kontinual.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "kontinual.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "kontinual.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "kontinual.labels" -}}
helm.sh/chart: {{ include "kontinual.chart" . }}
{{ include "kontinual.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "kontinual.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kontinual.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "kontinual.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kontinual.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference "repository:tag", the tag defaulting to the chart's appVersion.
Usage: include "kontinual.image" (dict "image" .Values.serverImage "root" .)
*/}}
{{- define "kontinual.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}

{{/*
RBAC rules the operator needs on namespaced objects, in every namespace it watches.
Grouped as in kopf's deployment-rbac.yaml: "framework" is what kopf itself does,
"application" is what Kontinual's reconcile does (tests/chart/test_rbac.py checks these
cover kontinual.controller.k8s.API_USAGE and kontinual.controller.handlers.FRAMEWORK_API_USAGE).
*/}}
{{- define "kontinual.namespacedRules" -}}
# Framework: posting the events about the handling of ContinualModels.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
# Framework + application: watching ContinualModels, their finalizer, their status.
- apiGroups: [kontinual.io]
  resources: [continualmodels]
  verbs: [get, list, watch, patch]
- apiGroups: [kontinual.io]
  resources: [continualmodels/status]
  verbs: [get, patch]
# Application: the server's ConfigMap, Service and the model store's claim.
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
# Application: reading the Roboflow API key from the Secret a ContinualModel names, to poll its
# project for minNewLabeledImages triggers (get only: never list, watch or write Secrets).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Application: reading the trainer's result from its pod's termination message.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Application: the DeepSparse Server Deployment.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Application: training Jobs (finished ones go by their ttlSecondsAfterFinished).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
# Application: the server's HorizontalPodAutoscaler (spec.serving.autoscaling); deleted when
# autoscaling is switched off, so it cannot fight spec.serving.replicas.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
# Application: the server pods' NetworkPolicy (spec.serving.networkPolicy); watched so a deleted one
# comes back at once, deleted when the spec drops it.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}

{{/*
RBAC rules kopf needs cluster-wide whatever the watched namespaces are.
*/}}
{{- define "kontinual.clusterRules" -}}
# Framework: runtime observation of CRDs (kopf notices the ContinualModel CRD's changes).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
# Framework: runtime observation of namespaces.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}
