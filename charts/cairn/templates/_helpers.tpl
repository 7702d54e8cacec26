{{/*
Names. Kubernetes names are at most 63 characters; StatefulSet names stay within 52 so that
their pods' controller-revision-hash label fits too. Every component name is built here.
*/}}
{{- define "cairn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.fullname" -}}
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

{{/* "<fullname>-<component>", at most 52 characters. Call with (list $ "component"). */}}
{{- define "cairn.componentName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $suffix := printf "-%s" $component }}
{{- printf "%s%s" (include "cairn.fullname" $root | trunc (int (sub 52 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "cairn.operatorName" -}}{{ include "cairn.componentName" (list . "operator") }}{{- end }}
{{- define "cairn.postgresqlName" -}}{{ include "cairn.componentName" (list . "postgresql") }}{{- end }}
{{- define "cairn.minioName" -}}{{ include "cairn.componentName" (list . "minio") }}{{- end }}

{{- define "cairn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (list $ "component"). */}}
{{- define "cairn.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "cairn.chart" $root }}
{{ include "cairn.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: cairn
{{- end }}

{{/* Labels a selector matches on; they never change across upgrades. */}}
{{- define "cairn.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "cairn.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "cairn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cairn.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: [global.imageRegistry/]repository[:tag][@digest]. Call with
(list $ .Values.x.image "x.image"); the last item names the value in error messages. There is no
public default: an empty repository fails the render with the value to set, and so does an image
with neither tag nor digest (the runtime would pull whatever `:latest` is that day).
*/}}
{{- define "cairn.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $path := index . 2 }}
{{- $repository := required (printf "%s.repository: name an image in your registry mirror (see docs/helm.md, \"Mirroring images\")" $path) $image.repository }}
{{- $registry := $root.Values.global.imageRegistry | trimSuffix "/" }}
{{- if $registry }}{{ $repository = printf "%s/%s" $registry $repository }}{{ end }}
{{- $ref := $repository }}
{{- $tag := $image.tag }}
{{- if and (not $tag) (eq $path "image") }}{{ $tag = $root.Chart.AppVersion }}{{ end }}
{{- if not (or $tag $image.digest) }}
{{- fail (printf "%s: set tag or digest; without either the image would be whatever :latest is when a node pulls it" $path) }}
{{- end }}
{{- if $tag }}{{ $ref = printf "%s:%s" $ref $tag }}{{ end }}
{{- if $image.digest }}{{ $ref = printf "%s@%s" $ref $image.digest }}{{ end }}
{{- $ref }}
{{- end }}

{{- define "cairn.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Namespaces the operator handles; empty means every namespace. */}}
{{- define "cairn.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- join " " (uniq .Values.operator.watchNamespaces) }}
{{- else if not .Values.rbac.clusterWide }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Namespaces that get the training pods' database Secret and network policy. */}}
{{- define "cairn.runNamespaces" -}}
{{- default .Release.Namespace (include "cairn.watchNamespaces" .) }}
{{- end }}

{{/*
Generated credentials: taken from values, else from the Secret of a previous install (so an
upgrade keeps them, and so does a reinstall: `helm uninstall` keeps that Secret with the volumes),
else random. Memoised in .Values so every template sees the same value.
Rendered without a cluster (helm template, a client-side dry run, a GitOps tool), `lookup` finds
nothing, not even kube-system: a password generated there would change on every render and the
bundled server, initialised with the first one, would refuse the next. That fails, naming the value
to set. Call with (list $ "postgresql"|"minio").
*/}}
{{- define "cairn.generatedPassword" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $auth := get (get $root.Values $component) "auth" }}
{{- $key := ternary "password" "rootPassword" (eq $component "postgresql") }}
{{- if not (get $auth $key) }}
{{- $name := include "cairn.componentName" (list $root $component) }}
{{- $previous := lookup "v1" "Secret" $root.Release.Namespace $name }}
{{- if and $previous (hasKey ($previous.data | default dict) $key) }}
{{- $_ := set $auth $key (index $previous.data $key | b64dec) }}
{{- else if not (lookup "v1" "Namespace" "" "kube-system") }}
{{- fail (printf "%s.auth.%s: set it when rendering without a cluster (helm template, --dry-run, GitOps): a generated one cannot be read back there, so each render would make a new one that the bundled %s, initialised with the first, refuses" $component $key $component) }}
{{- else }}
{{- $_ := set $auth $key (randAlphaNum 32) }}
{{- end }}
{{- end }}
{{- get $auth $key }}
{{- end }}

{{/* The store's URL (only ever written into Secrets). */}}
{{- define "cairn.databaseUrl" -}}
{{- if .Values.postgresql.enabled }}
{{- $auth := .Values.postgresql.auth }}
{{- printf "postgresql://%s:%s@%s.%s.svc:%d/%s" (urlquery $auth.username) (include "cairn.generatedPassword" (list . "postgresql")) (include "cairn.postgresqlName" .) .Release.Namespace (int .Values.postgresql.service.port) $auth.database }}
{{- else }}
{{- $db := .Values.externalDatabase }}
{{- if $db.url }}
{{- $db.url }}
{{- else }}
{{- $host := required "externalDatabase: set url, host or existingSecret, or enable postgresql" $db.host }}
{{- $url := printf "postgresql://%s:%s@%s:%d/%s" (urlquery $db.user) (urlquery $db.password) $host (int $db.port) $db.database }}
{{- if $db.sslMode }}{{ $url = printf "%s?sslmode=%s" $url $db.sslMode }}{{ end }}
{{- $url }}
{{- end }}
{{- end }}
{{- end }}

{{/* Secret (in the release namespace) and key the operator reads the store's URL from. */}}
{{- define "cairn.databaseSecretName" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecret }}
{{- else }}
{{- include "cairn.componentName" (list . "store") }}
{{- end }}
{{- end }}

{{- define "cairn.databaseSecretKey" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecretKey }}
{{- else }}url{{ end }}
{{- end }}

{{- define "cairn.usesExistingDatabaseSecret" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret }}true{{ end }}
{{- end }}

{{/* The runs' object store: "minio" (bundled), "external" (externalS3.endpoint), "existing"
(externalS3.existingSecret) or empty (none: artifacts stay in the pod). */}}
{{- define "cairn.objectStore" -}}
{{- if .Values.minio.enabled }}minio
{{- else if .Values.externalS3.existingSecret }}existing
{{- else if .Values.externalS3.endpoint }}external
{{- end }}
{{- end }}

{{/* The Secret in each run namespace with the object store settings; empty without a store. */}}
{{- define "cairn.objectStoreSecretName" -}}
{{- $store := include "cairn.objectStore" . }}
{{- if eq $store "existing" }}{{ .Values.externalS3.existingSecret }}
{{- else if $store }}{{ .Values.trainingPods.objectStoreSecret.name }}
{{- end }}
{{- end }}

{{/* Container security shared by every container the chart runs. */}}
{{- define "cairn.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{- define "cairn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.operator.runAsUser }}
runAsGroup: {{ .Values.operator.runAsUser }}
fsGroup: {{ .Values.operator.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The store URL as an environment variable, from the operator's Secret. */}}
{{- define "cairn.databaseUrlEnv" -}}
- name: CAIRN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "cairn.databaseSecretName" . }}
      key: {{ include "cairn.databaseSecretKey" . }}
{{- end }}

{{/*
Init containers of a bundled store's pod, in Cairn's image (which has a shell; the store's may not).
With <component>.volumePermissions.enabled, one makes the data volume owned by the server's user
(as root, with only the CHOWN capability). Then one checks, as the server's user, that it can write
there, and otherwise fails at once naming the owner it found: the server would crash-loop on
"permission denied" while `helm install --wait` only times out. Call with (list $ component mountPath).
*/}}
{{- define "cairn.storeVolumeInitContainers" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $path := index . 2 }}
{{- $uid := int (get $root.Values $component).runAsUser }}
{{- if (get $root.Values $component).volumePermissions.enabled }}
- name: volume-permissions
  image: {{ include "cairn.image" (list $root $root.Values.image "image") }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: [chown, "{{ $uid }}:{{ $uid }}", {{ $path | quote }}]
  resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
      add: [CHOWN]
  volumeMounts:
    - name: data
      mountPath: {{ $path }}
{{- end }}
- name: check-volume
  image: {{ include "cairn.image" (list $root $root.Values.image "image") }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - |
      probe="$1/.cairn-write-check"
      if touch "$probe" 2>/dev/null && rm -f "$probe"; then exit 0; fi
      me="$(id -u)"
      echo "$1, the $2 data volume, is not writable by uid $me: it is owned by uid $(stat -c %u "$1") with mode $(stat -c %a "$1"). Make its directory owned by uid $me (a hostPath: chown $me:$me on the node) or set $2.volumePermissions.enabled=true (docs/helm.md, \"Volumes of the bundled stores\")." >&2
      exit 1
    - check-volume
    - {{ $path | quote }}
    - {{ $component }}
  terminationMessagePolicy: FallbackToLogsOnError
  resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
  securityContext:
    {{- include "cairn.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: {{ $path }}
{{- end }}
