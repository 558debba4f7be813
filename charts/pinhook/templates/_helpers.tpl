{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "pinhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: the release name, or RELEASE-pinhook when it does not contain "pinhook". */}}
{{- define "pinhook.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "pinhook.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pinhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select pinhook's pods. */}}
{{- define "pinhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pinhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret holding the serving certificate. */}}
{{- define "pinhook.tlsSecret" -}}
{{- if eq .Values.certificates.mode "secret" }}
{{- required "certificates.secret.name is required when certificates.mode is secret" .Values.certificates.secret.name }}
{{- else }}
{{- printf "%s-tls" (include "pinhook.fullname" .) }}
{{- end }}
{{- end }}

{{/* The image reference: repository:tag, or repository:tag@digest when a digest is given. */}}
{{- define "pinhook.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The cert-manager Certificate whose CA the cainjector copies into caBundle. */}}
{{- define "pinhook.certificate" -}}
{{- printf "%s-serving" (include "pinhook.fullname" .) }}
{{- end }}

{{/* Everything both webhooks share: client config, selectors, timeouts. Argument: (list $ PATH). */}}
{{- define "pinhook.webhookCommon" -}}
{{- $ := index . 0 }}
{{- $path := index . 1 -}}
admissionReviewVersions: ["v1"]
sideEffects: None
failurePolicy: {{ $.Values.webhook.failurePolicy }}
matchPolicy: Equivalent
timeoutSeconds: {{ $.Values.webhook.timeoutSeconds }}
clientConfig:
  {{- if $.Values.webhook.url }}
  url: {{ printf "%s%s" (trimSuffix "/" $.Values.webhook.url) $path | quote }}
  {{- else }}
  service:
    name: {{ include "pinhook.fullname" $ }}
    namespace: {{ $.Release.Namespace }}
    path: {{ $path }}
    port: {{ $.Values.service.port }}
  {{- end }}
  {{- if eq $.Values.certificates.mode "secret" }}
  caBundle: {{ required "certificates.secret.caBundle is required when certificates.mode is secret" $.Values.certificates.secret.caBundle }}
  {{- end }}
{{ include "pinhook.selectors" $ }}
rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["pods", "pods/ephemeralcontainers", "podtemplates", "replicationcontrollers"]
    scope: Namespaced
  - apiGroups: ["apps"]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
    scope: Namespaced
  - apiGroups: ["batch"]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["jobs", "cronjobs"]
    scope: Namespaced
{{- end }}

{{/* What pinhook judges: every namespace but its own, kube-system and the excluded ones (and
only those with webhook.namespaceLabels), every object but the opted-out ones. Shared by both
webhooks and the backstop's binding, so the three always cover the same objects. */}}
{{- define "pinhook.selectors" -}}
namespaceSelector:
  {{- with .Values.webhook.namespaceLabels }}
  matchLabels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  matchExpressions:
    # pinhook's own namespace and kube-system are always excluded, so neither pinhook nor the
    # control plane can be locked out by pinhook being down.
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- range (concat (list .Release.Namespace "kube-system") .Values.webhook.excludeNamespaces | uniq) }}
        - {{ . | quote }}
        {{- end }}
{{- if .Values.webhook.optOutLabel }}
objectSelector:
  matchExpressions:
    - key: {{ .Values.webhook.optOutLabel }}
      operator: NotIn
      values: ["true"]
{{- end }}
{{- end }}

{{/* A policy glob (exemptImages, exemptNamespaces; docs/policy.md) as an RE2 regex over the
whole string, for CEL's matches(). `*` `?` `[!…]` `{a,b}` translate; an escaped glob character
(a backslash before `*`) does not. A glob of a Docker Hub image (docker.io/…) also matches the short spellings the
webhook normalizes (`busybox`, `library/busybox`, `docker.io/busybox`). */}}
{{- define "pinhook.globRegex" -}}
{{- $g := . -}}
{{- $prefix := "" -}}
{{- if hasPrefix "docker.io/library/" $g -}}
{{- $prefix = `(?:(?:docker\.io/|index\.docker\.io/)?library/|docker\.io/|index\.docker\.io/)?` -}}
{{- $g = trimPrefix "docker.io/library/" $g -}}
{{- else if hasPrefix "docker.io/" $g -}}
{{- $prefix = `(?:docker\.io/|index\.docker\.io/)?` -}}
{{- $g = trimPrefix "docker.io/" $g -}}
{{- end -}}
{{- $r := regexReplaceAll `([.+()|^$])` $g `\${1}` -}}
{{- $r = $r | replace "*" ".*" | replace "?" "." | replace "[!" "[^" | replace "{" "(?:" | replace "}" ")" | replace "," "|" -}}
{{- printf "^%s%s$" $prefix $r -}}
{{- end }}

{{/* A list of strings as CEL raw string literals, comma-separated. */}}
{{- define "pinhook.celStrings" -}}
{{- $out := list -}}
{{- range . -}}
{{- if contains "'" . -}}
{{- fail (printf "backstop: pattern %q contains a single quote" .) -}}
{{- end -}}
{{- $out = append $out (printf "r'%s'" .) -}}
{{- end -}}
{{- join ", " $out -}}
{{- end }}

{{/* Annotations on both webhook configurations (cert-manager's CA injection). */}}
{{- define "pinhook.webhookAnnotations" -}}
{{- if eq .Values.certificates.mode "certManager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "pinhook.certificate" .) }}
{{- end }}
{{- end }}
